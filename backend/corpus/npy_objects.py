""".npz members read without unpickling, object arrays included.

numpy writes an object array (texts from pandas, mixed ids) as a pickle of the ndarray, and
`np.load(allow_pickle=True)` would run whatever that pickle names. This reader never unpickles:
it walks the pickle's opcodes (`pickletools.genops`) with a small stack machine that knows only
plain data (str, bytes, numbers, None, bool, tuples, lists, dicts) and, by name, the numpy
callables that rebuild an array (`_reconstruct`, `ndarray`, `dtype`, `scalar`). It never calls
them; it reads their arguments. Any other global, or any opcode that builds objects, is refused.
Numeric arrays load with `allow_pickle=False`.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InvalidRequest

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
_PUSH_ARG = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
             "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINBYTES", "BINBYTES",
             "BINBYTES8", "SHORT_BINSTRING", "BINSTRING", "STRING"}


class _Global:
    def __init__(self, module: str, name: str) -> None:
        if (module, name) not in ALLOWED:
            raise InvalidRequest(f"The array pickle names {module}.{name}; only numpy array data is read. "
                                 "Re-save the file with plain arrays (e.g. np.array(texts, dtype=str)).")
        self.name = name


class _Call:
    def __init__(self, func: _Global, args: tuple) -> None:
        self.func, self.args, self.state = func, args, None


def _machine(data: bytes) -> Any:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name in _PUSH_ARG:
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(str(module), str(attr)))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not isinstance(func, _Global) or not isinstance(args, tuple):
                raise InvalidRequest("The array pickle calls something other than numpy's array rebuilders.")
            stack.append(_Call(func, args))
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], _Call):
                raise InvalidRequest("The array pickle sets the state of a non-numpy object.")
            stack[-1].state = state
        else:
            raise InvalidRequest(f"The array pickle uses opcode {name}, which plain array data never needs; "
                                 "it is not read.")
    if len(stack) != 1:
        raise InvalidRequest("The array pickle is malformed.")
    return stack[0]


def _dtype(call: Any) -> np.dtype:
    if not (isinstance(call, _Call) and call.func.name == "dtype" and call.args and isinstance(call.args[0], str)):
        raise InvalidRequest("The array pickle holds a dtype in an unknown form.")
    order = call.state[1] if isinstance(call.state, tuple) and len(call.state) > 1 else "|"
    code = call.args[0]
    return np.dtype(code if order in ("|", "=") or code.startswith("O") else order + code)


def _value(x: Any) -> Any:
    if isinstance(x, _Call):
        if x.func.name != "scalar" or len(x.args) != 2 or not isinstance(x.args[1], bytes):
            raise InvalidRequest("The object array holds nested arrays or objects; only scalars are read.")
        dt = _dtype(x.args[0])
        if dt.hasobject:
            raise InvalidRequest("The object array holds object scalars; they are not read.")
        return np.frombuffer(x.args[1], dtype=dt)[0].item()
    if isinstance(x, (list, tuple, dict)):
        raise InvalidRequest("The object array holds lists or dicts; only scalars (text, numbers) are read.")
    return x


def object_array(data: bytes) -> np.ndarray:
    """The object ndarray pickled in `data`, rebuilt without unpickling."""
    obj = _machine(data)
    if not (isinstance(obj, _Call) and obj.func.name == "_reconstruct" and isinstance(obj.state, tuple)
            and len(obj.state) == 5):
        raise InvalidRequest("The pickle does not hold a numpy array.")
    _version, shape, dtype_call, fortran, items = obj.state
    if not _dtype(dtype_call).hasobject or not isinstance(items, list):
        raise InvalidRequest("The pickled array is not an object array of scalars.")
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = _value(x)
    return out.reshape(tuple(shape), order="F" if fortran else "C")


def read_npy(fh: Any) -> np.ndarray:
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise InvalidRequest(f"Unsupported .npy format version {version}.")
    shape, fortran, dtype = read_header[version](fh)
    if dtype.hasobject:
        arr = object_array(fh.read())
        if arr.shape != tuple(shape):
            raise InvalidRequest(f"The object array's header says {shape}, its data {arr.shape}.")
        return arr
    raw = fh.read()
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)) if shape else 1)
    return arr.reshape(shape, order="F" if fortran else "C")


class NpzReader:
    """Members of an .npz archive by name, each read when asked for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InvalidRequest(f"{self.path} is not a readable .npz archive ({exc}).") from exc
        self.names = [n.removesuffix(".npy") for n in self.zip.namelist() if n.endswith(".npy")]

    def get(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise InvalidRequest(f"{self.path} has no array '{name}'; it has {self.names}.")
        with self.zip.open(name + ".npy") as fh:
            return read_npy(io.BytesIO(fh.read()))

    def close(self) -> None:
        self.zip.close()
