"""kerna's benchmark suite: ``make bench`` (``python -m benchmarks.run_all``).

Each workload runs, in the same process run, against the plain-asyncio floor, kerna,
autogen-core's SingleThreadedAgentRuntime and pykka's ThreadingActor. See README.md.
"""
