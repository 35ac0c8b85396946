"""Plain data on the wire: how values cross between the grader's examiner and a learner's kernel.

When a notebook is graded, its tests run in a trusted examiner process and the learner's
functions run in the learner's own kernel. Everything that passes between the two is plain
data, encoded here as a JSON-able tree plus a list of raw byte buffers, never pickle:

* ``None``, ``bool``, ``int``, finite ``float``, ``str``, lists (strict JSON, as Jupyter
  messages require);
* tagged one-key objects for the rest: ``{"T": [...]}`` a tuple, ``{"D": [[k, v], ...]}`` a
  dict, ``{"f": "nan"}`` a float that JSON cannot hold, ``{"t": {...}}`` a tensor, ``{"c": [re, im]}`` a complex number, ``{"b": i}`` bytes,
  ``{"dt": "float32"}`` a dtype, ``{"dev": "cuda:0"}`` a device, ``{"sz": [...]}`` a
  ``torch.Size``, ``{"sl": [start, stop, step]}`` a slice, ``{"E": 0}`` the ellipsis,
  ``{"set": [...]}``, ``{"np": {...}}`` a NumPy array, ``{"dc": [class, fields]}`` one of
  attnkit's dataclasses (a ``DecoderConfig``), ``{"h": [...]}`` a handle on an object that
  stays where it lives (a learner's function, class or module).

A tensor travels as its storage's bytes (once per storage, so views that share memory still
share it on the other side, and bytes after a view, as the Triton checkers' NaN guards, come
along) with dtype, shape, strides, offset and device. Decoding checks every bound: the
nesting depth, the number of nodes, the bytes, that each view stays inside its storage. A
value that is not data cannot be smuggled in: the decoder only ever builds the types above.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math

MAX_DEPTH = 64
MAX_NODES = 2_000_000
MAX_BYTES = 1 << 30  # buffer bytes in one message
MAX_STR = 32 << 20  # characters in one string
MAX_ELEMENTS = 1 << 32  # elements one decoded tensor view may address
WHOLE_STORAGE_BYTES = 16 << 20  # storages up to this size travel whole (guard bytes and aliasing kept)

_DTYPE_NAMES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64",
                "complex64", "complex128", "uint16", "uint32", "uint64")


class WireError(ValueError):
    """A value that cannot be sent, or a message that is not well-formed plain data."""


def _torch():
    import torch
    return torch


def _dtypes():
    torch = _torch()
    return {name: getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)}


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _numpy():
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return numpy


def _is_allowed_dataclass(obj) -> bool:
    cls = type(obj)
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and cls.__module__.startswith("attnkit.")


class Encoder:
    """Turns values into ``(tree, buffers)``.

    handle: called with an object that is not data; returns the tree node that stands for it
        (``{"h": ...}``) or raises ``WireError``. Without it such objects cannot be sent.
    """

    def __init__(self, handle=None):
        self.handle = handle
        self.buffers: list = []
        self.storages: list[dict] = []
        self._storage_index: dict = {}
        self._bytes = 0
        self._nodes = 0

    def header(self, **fields) -> dict:
        """A message header: ``fields`` plus the storage table of every tensor encoded so far."""
        return {**fields, "storages": self.storages}

    def _add_buffer(self, data) -> int:
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._bytes += size
        if self._bytes > MAX_BYTES:
            raise WireError(f"more than {MAX_BYTES >> 20} MiB of data in one message")
        self.buffers.append(data)
        return len(self.buffers) - 1

    def encode(self, value, depth: int = 0):
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise WireError(f"more than {MAX_NODES} values in one message")
        if depth > MAX_DEPTH:
            raise WireError(f"nested more than {MAX_DEPTH} levels deep")
        if value is None or type(value) is bool:
            return value
        if type(value) is str:
            if len(value) > MAX_STR:
                raise WireError(f"a string of {len(value)} characters is too long to send")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: not valid in any message
                value = value.encode("utf-8", "replace").decode("utf-8")
            return value
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            value = float(value)
            return value if math.isfinite(value) else {"f": repr(value)}
        if isinstance(value, complex):
            return {"c": [self.encode(value.real, depth + 1), self.encode(value.imag, depth + 1)]}
        if isinstance(value, str):
            return self.encode(str(value), depth)
        torch = _torch()
        if isinstance(value, torch.Tensor):
            return {"t": self._tensor(value)}
        if isinstance(value, (bytes, bytearray)):
            return {"b": self._add_buffer(bytes(value))}
        if isinstance(value, torch.dtype):
            return {"dt": dtype_name(value)}
        if isinstance(value, torch.device):
            return {"dev": str(value)}
        if isinstance(value, torch.Size):
            return {"sz": [int(s) for s in value]}
        if isinstance(value, tuple):  # named tuples and torch's return types travel as plain tuples
            return {"T": [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, list):
            return [self.encode(v, depth + 1) for v in value]
        if isinstance(value, dict):
            return {"D": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in value.items()]}
        if isinstance(value, (set, frozenset)):
            return {"set": [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, slice):
            return {"sl": [self.encode(value.start, depth + 1), self.encode(value.stop, depth + 1),
                           self.encode(value.step, depth + 1)]}
        if value is Ellipsis:
            return {"E": 0}
        if isinstance(value, range):
            return {"range": [value.start, value.stop, value.step]}
        np = _numpy()
        if np is not None and isinstance(value, np.generic):
            return self.encode(value.item(), depth)
        if np is not None and isinstance(value, np.ndarray):
            return {"np": self._ndarray(value)}
        if _is_allowed_dataclass(value):
            cls = type(value)
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return {"dc": [f"{cls.__module__}:{cls.__qualname__}", self.encode(fields, depth + 1)]}
        if self.handle is not None:
            return self.handle(value)
        raise WireError(f"a {type(value).__name__} cannot be sent to the learner's code (only plain data can)")

    def _tensor(self, t) -> dict:
        torch = _torch()
        if t.layout != torch.strided or t.is_quantized or getattr(t, "is_nested", False):
            raise WireError(f"a {t.layout} tensor cannot be sent; only dense tensors can")
        if t.device.type == "meta":
            raise WireError("a tensor on the meta device holds no values to send")
        if dtype_name(t.dtype) not in _DTYPE_NAMES:
            raise WireError(f"tensors of dtype {t.dtype} cannot be sent")
        t = t.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        shape, stride, offset = list(t.shape), list(t.stride()), t.storage_offset()
        storage = t.untyped_storage()
        itemsize = t.element_size()
        needed = (offset + sum((s - 1) * st for s, st in zip(shape, stride)) + 1) * itemsize if t.numel() else 0
        if storage.nbytes() <= max(4 * needed, WHOLE_STORAGE_BYTES):
            key = (storage.data_ptr(), storage.nbytes(), str(t.device))
            index = self._storage_index.get(key)
            if index is None:
                raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)
                index = len(self.storages)
                self.storages.append({"buf": self._add_buffer(_tensor_bytes(raw)), "device": str(t.device)})
                self._storage_index[key] = index
        else:  # a small view of a large storage: send only its own values
            t = t.contiguous()
            shape, stride, offset = list(t.shape), list(t.stride()), 0
            raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
            index = len(self.storages)
            self.storages.append({"buf": self._add_buffer(_tensor_bytes(raw)), "device": str(t.device)})
        return {"s": index, "dtype": dtype_name(t.dtype), "shape": shape, "stride": stride, "offset": offset,
                "grad": bool(t.requires_grad)}

    def _ndarray(self, a) -> dict:
        np = _numpy()
        if a.dtype.kind not in "biufc":
            raise WireError(f"NumPy arrays of dtype {a.dtype} cannot be sent")
        a = np.ascontiguousarray(a)
        return {"buf": self._add_buffer(a.tobytes()), "dtype": a.dtype.str, "shape": list(a.shape)}


def _tensor_bytes(raw) -> bytes:
    return raw.cpu().numpy().tobytes() if raw.numel() else b""


class Decoder:
    """Builds values from ``(header, buffers)``, checking every bound.

    handle: called with the payload of a ``{"h": ...}`` node; returns the object it stands for
        (a proxy in the examiner, the learner's own object in the kernel).
    device: where decoded tensors go when their device is not available here (None: refuse).
    """

    def __init__(self, header: dict, buffers: list, handle=None):
        if not isinstance(header, dict):
            raise WireError("a message header must be an object")
        if not isinstance(buffers, (list, tuple)):
            raise WireError("message buffers must be a list")
        total = sum(_nbytes(b) for b in buffers)
        if total > MAX_BYTES:
            raise WireError(f"more than {MAX_BYTES >> 20} MiB of data in one message")
        self.buffers = list(buffers)
        self.handle = handle
        self._storages_spec = header.get("storages", [])
        if not isinstance(self._storages_spec, list):
            raise WireError("the storage table must be a list")
        self._storages: dict = {}
        self._nodes = 0

    def _buffer(self, index):
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise WireError(f"no buffer {index!r}")
        return self.buffers[index]

    def decode(self, node, depth: int = 0):
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise WireError(f"more than {MAX_NODES} values in one message")
        if depth > MAX_DEPTH:
            raise WireError(f"nested more than {MAX_DEPTH} levels deep")
        if node is None or type(node) in (bool, int, float):
            return node
        if type(node) is str:
            if len(node) > MAX_STR:
                raise WireError("a string too long to receive")
            return node
        if type(node) is list:
            return [self.decode(v, depth + 1) for v in node]
        if type(node) is not dict or len(node) != 1:
            raise WireError(f"not a value: {type(node).__name__}")
        (tag, body), = node.items()
        if tag == "T":
            return tuple(self.decode(v, depth + 1) for v in _list(body))
        if tag == "D":
            out = {}
            for pair in _list(body):
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict entry must be a [key, value] pair")
                key = self.decode(pair[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise WireError(f"a {type(key).__name__} cannot be a dict key") from None
                out[key] = self.decode(pair[1], depth + 1)
            return out
        if tag == "t":
            return self._tensor(body)
        if tag == "f":
            if body not in ("nan", "inf", "-inf"):
                raise WireError(f"not a float: {body!r}")
            return float(body)
        if tag == "c":
            re, im = (self.decode(v, depth + 1) for v in _list(body, 2))
            return complex(_number(re), _number(im))
        if tag == "b":
            return bytes(self._buffer(body))
        if tag == "dt":
            dtypes = _dtypes()
            if body not in dtypes:
                raise WireError(f"unknown dtype {body!r}")
            return dtypes[body]
        if tag == "dev":
            return _torch().device(_string(body))
        if tag == "sz":
            return _torch().Size([_int(v) for v in _list(body)])
        if tag == "sl":
            start, stop, step = (self.decode(v, depth + 1) for v in _list(body, 3))
            return slice(start, stop, step)
        if tag == "E":
            return Ellipsis
        if tag == "set":
            try:
                return {self.decode(v, depth + 1) for v in _list(body)}
            except TypeError:
                raise WireError("a set of unhashable values") from None
        if tag == "range":
            start, stop, step = (_int(v) for v in _list(body, 3))
            if step == 0:
                raise WireError("a range with step 0")
            return range(start, stop, step)
        if tag == "np":
            return self._ndarray(body)
        if tag == "dc":
            name, fields = _list(body, 2)
            return self._dataclass(_string(name), self.decode(fields, depth + 1))
        if tag == "h":
            if self.handle is None:
                raise WireError("a handle where only data was expected")
            return self.handle(body)
        raise WireError(f"unknown tag {tag!r}")

    def _storage(self, index):
        torch = _torch()
        if index in self._storages:
            return self._storages[index]
        if type(index) is not int or not 0 <= index < len(self._storages_spec):
            raise WireError(f"no storage {index!r}")
        spec = self._storages_spec[index]
        if not isinstance(spec, dict):
            raise WireError("a storage entry must be an object")
        raw = self._buffer(spec.get("buf"))
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if _nbytes(raw) else torch.empty(0, dtype=torch.uint8)
        device = torch.device(_string(spec.get("device", "cpu")))
        if device.type != "cpu":
            if device.type == "cuda" and not torch.cuda.is_available():
                raise WireError(f"a tensor on {device}, but there is no GPU here")
            data = data.to(device)
        self._storages[index] = data
        return data

    def _tensor(self, spec):
        torch = _torch()
        if not isinstance(spec, dict):
            raise WireError("a tensor must be described by an object")
        dtypes = _dtypes()
        dtype = dtypes.get(spec.get("dtype"))
        if dtype is None:
            raise WireError(f"unknown tensor dtype {spec.get('dtype')!r}")
        shape = [_int(s) for s in _list(spec.get("shape"))]
        stride = [_int(s) for s in _list(spec.get("stride"))]
        offset = _int(spec.get("offset", 0))
        if len(shape) != len(stride) or len(shape) > MAX_DEPTH:
            raise WireError("a tensor's shape and strides do not match")
        if any(s < 0 for s in shape) or any(s < 0 for s in stride) or offset < 0:
            raise WireError("negative sizes, strides or offsets")
        numel = math.prod(shape)
        if numel > MAX_ELEMENTS:
            raise WireError(f"a tensor of {numel} elements is too large")
        raw = self._storage(spec.get("s"))
        itemsize = torch.empty(0, dtype=dtype).element_size()
        usable = raw.numel() - raw.numel() % itemsize
        base = raw[:usable].view(dtype) if usable else torch.empty(0, dtype=dtype, device=raw.device)
        if numel:
            last = offset + sum((s - 1) * st for s, st in zip(shape, stride))
            if last >= base.numel():
                raise WireError("a tensor view reaches past the end of its storage")
        elif offset > base.numel():
            raise WireError("a tensor view starts past the end of its storage")
        t = torch.as_strided(base, shape, stride, offset)
        if spec.get("grad") is True and (t.is_floating_point() or t.is_complex()):
            t = t.detach().requires_grad_()
        return t

    def _ndarray(self, spec):
        np = _numpy()
        if np is None or not isinstance(spec, dict):
            raise WireError("a NumPy array cannot be received here")
        try:
            dtype = np.dtype(_string(spec.get("dtype")))
        except TypeError:
            raise WireError(f"unknown NumPy dtype {spec.get('dtype')!r}") from None
        if dtype.kind not in "biufc":
            raise WireError(f"NumPy arrays of dtype {dtype} cannot be received")
        shape = [_int(s) for s in _list(spec.get("shape"))]
        raw = self._buffer(spec.get("buf"))
        if math.prod(shape) * dtype.itemsize != _nbytes(raw):
            raise WireError("a NumPy array's bytes do not match its shape")
        return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)

    def _dataclass(self, name: str, fields):
        module_name, _, qualname = name.partition(":")
        if not module_name.startswith("attnkit.") or not qualname or not isinstance(fields, dict):
            raise WireError(f"{name!r} is not one of attnkit's dataclasses")
        try:
            cls = importlib.import_module(module_name)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            raise WireError(f"{name!r} is not one of attnkit's dataclasses") from None
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)
                and str(getattr(cls, "__module__", "")).startswith("attnkit.")):
            raise WireError(f"{name!r} is not one of attnkit's dataclasses")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if not set(fields) <= names:
            raise WireError(f"{name} has no field(s) {sorted(set(fields) - names)}")
        return cls(**fields)


def _nbytes(buffer) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def _list(value, length: int | None = None) -> list:
    if type(value) is not list or (length is not None and len(value) != length):
        raise WireError("malformed message: a list was expected" + (f" of {length}" if length else ""))
    return value


def _int(value) -> int:
    if type(value) is not int:
        raise WireError(f"malformed message: an integer was expected, got {type(value).__name__}")
    return value


def _number(value):
    if type(value) not in (int, float):
        raise WireError("malformed message: a number was expected")
    return value


def _string(value) -> str:
    if type(value) is not str:
        raise WireError("malformed message: a string was expected")
    return value


def dumps(header: dict) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")


def loads(data: bytes) -> dict:
    """Parse a header; malformed or absurdly nested JSON is a ``WireError``, never a crash."""
    try:
        header = json.loads(data)
    except RecursionError:
        raise WireError("a message nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"a message that is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("a message header must be an object")
    return header


def encode(value, handle=None) -> tuple[object, Encoder]:
    """``(tree, encoder)``: put ``encoder.header(value=tree)`` and ``encoder.buffers`` on the wire."""
    enc = Encoder(handle)
    return enc.encode(value), enc
