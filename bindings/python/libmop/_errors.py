"""The one exception class of libmop."""
from __future__ import annotations

__all__ = ["MopError"]

# Mirror of MOP_STATUS_TABLE in include/libmop/mop_core.h (append-only there too).
STATUS_NAMES = {
    0: "MOP_OK",
    -1: "MOP_E_INVALID_ARG",
    -2: "MOP_E_IO",
    -3: "MOP_E_FORMAT",
    -4: "MOP_E_UNSUPPORTED",
    -5: "MOP_E_NOMEM",
    -6: "MOP_E_SHAPE",
    -7: "MOP_E_CHECKSUM",
    -8: "MOP_E_RANGE",
    -9: "MOP_E_STATE",
    -10: "MOP_E_CANCELLED",
    -11: "MOP_E_INTERNAL",
}
STATUS_VALUES = {name: value for value, name in STATUS_NAMES.items()}


class MopError(Exception):
    """A libmop call failed.

    Attributes:
        status:  the C ``mop_status`` value (a negative int).
        name:    its symbolic name, e.g. ``"MOP_E_IO"``.
        message: the detail from ``mop_last_error()`` (or, for argument checks
                 the bindings do before calling C, their own message).
    """

    def __init__(self, status: int | str, message: str = "", *, code: int | None = None) -> None:
        if isinstance(status, str):
            name = status
            status = code if code is not None else STATUS_VALUES.get(name, -11)
        else:
            name = STATUS_NAMES.get(int(status), f"MOP_STATUS_{int(status)}")
        self.status: int = int(status)
        self.name: str = name
        self.message: str = message
        super().__init__(f"{name}: {message}" if message else name)

    def __reduce__(self):  # picklable (multiprocessing, Flower/Ray)
        return (_rebuild, (self.name, self.message, self.status))


def _rebuild(name: str, message: str, status: int) -> MopError:
    return MopError(name, message, code=status)
