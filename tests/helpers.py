"""Small helpers shared by the technique tests."""

from __future__ import annotations

from autocompress.techniques.common import Context


def ctx_for(teacher, digits, **kw) -> Context:
    """A trial context over the digits training split."""
    return Context(teacher=teacher, train_x=digits.train.x, train_y=digits.train.y,
                   example_input=digits.train.x[:1], **kw)


def folder_storage(out):
    """The Optuna storage of the study folder ``out`` (its journal, the default)."""
    from autocompress.backends.storage import default_url, open_storage

    return open_storage(default_url(out))
