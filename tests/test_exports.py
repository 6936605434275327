"""The public face: ``kerna.__all__`` is exactly the public names, sorted."""

from __future__ import annotations

import kerna


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(kerna) if not name.startswith("_")}
    # submodules of the package appear as attributes once imported; they are not API
    modules = {name for name in public if type(getattr(kerna, name)).__name__ == "module"}
    assert sorted(public - modules) == sorted(kerna.__all__)


def test_all_is_sorted() -> None:
    assert list(kerna.__all__) == sorted(kerna.__all__)


def test_errors_form_one_hierarchy() -> None:
    for name in kerna.__all__:
        obj = getattr(kerna, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not kerna.KernaError:
            if obj is kerna.KernaInternalError:
                assert not issubclass(obj, kerna.KernaError)  # kerna's bugs are not yours
            else:
                assert issubclass(obj, kerna.KernaError), name
    assert issubclass(kerna.AskTimeout, TimeoutError)
    assert issubclass(kerna.Conflict, kerna.StateError)
    for permanent in (kerna.StoreFailed, kerna.ValueTooLarge):  # retrying does not help
        assert issubclass(permanent, kerna.StateError)
        assert not issubclass(permanent, kerna.Unavailable)


def test_state_all_lists_exactly_the_public_names() -> None:
    import kerna.state

    public = {n for n in vars(kerna.state) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(kerna.state, n)).__name__ == "module"}
    assert sorted(public - modules) == sorted(kerna.state.__all__)
    assert list(kerna.state.__all__) == sorted(kerna.state.__all__)
