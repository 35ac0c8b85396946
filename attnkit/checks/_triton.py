"""Did a Triton kernel actually run? A Triton exercise must launch a kernel; a wrapper around
``torch.softmax`` or ``F.scaled_dot_product_attention`` launches none.

:func:`count_launches` (from :mod:`attnkit._spy`) patches the launch path shared by compiled
and interpreted kernels for the duration of a block and records the name of every kernel
launched; under the autograder it counts in the learner's kernel.
"""

from __future__ import annotations

import contextlib
import re

import torch

from .. import _spy


def padded(x: torch.Tensor, slack: int, fill: float) -> torch.Tensor:
    """``x``'s values, contiguous, followed in memory by ``slack`` elements of ``fill``.

    A kernel load that runs past the end of ``x`` then reads defined values (``fill``) rather
    than foreign memory, and a checker can tell from the output what the kernel read.
    """
    flat = torch.full((x.numel() + slack,), fill, dtype=x.dtype, device=x.device)
    flat[:x.numel()] = x.reshape(-1)
    return flat[:x.numel()].view(x.shape)


# Counting launches lives in attnkit._spy (the grader's kernel agent counts them too).
count_launches = _spy.count_launches


def call_kernel(c, label: str, *args):
    """``c.call`` for a Triton exercise. Two failures are not about the learner's kernel and are
    said so first: their Triton/NumPy versions (one sentence naming them and the fix, from
    :func:`attnkit._triton.version_problem`); then a stub (``raise NotImplementedError`` in a
    ``@triton.jit`` body reaches us wrapped in the interpreter's error, or on a GPU as a
    compilation error that quotes it) is reported as not implemented. Known kernel errors (a
    block length that is not a power of two, a compiler refusal) are said in the learner's terms.

    Under the interpreter the kernels the call launched are then compiled for a GPU
    (:class:`CompileCheck`): a kernel that runs here but would not compile on any GPU fails
    with the compiler's reason, as it would on a GPU."""
    from .. import _remote, _triton

    if not _remote.is_remote(c.fn):
        _triton.fix_interpreter()  # Triton < 3.7 with NumPy >= 2.4 (idempotent; the grader's kernel does it too)
    compiled = CompileCheck()
    try:
        with compiled:
            result = c.call(label, *args)
    except AssertionError as e:
        problem = _triton.version_problem(e)
        if problem is not None:
            raise AssertionError(f"{c.name}: {problem}\n  failing case: {label}") from e
        cause = e.__cause__
        while cause is not None:
            if isinstance(cause, NotImplementedError) or "NotImplementedError" in str(cause):
                raise AssertionError(f"{c.name}: not implemented yet. Your kernel still raises NotImplementedError: "
                                     f"replace it with the kernel's body.") from None
            cause = cause.__cause__
        hint = raised_hint(e)
        if hint is not None:
            raise AssertionError(f"{c.name}: {hint}\n  failing case: {label}") from e
        raise
    hint = compiled.hint()
    if hint is not None:
        raise AssertionError(f"{c.name}: {hint}\n  failing case: {label}")
    return result


ARANGE_HINT = ("tl.arange needs a power-of-two length, and so does every block shape: pad to a power of two "
               "(BLOCK_D = triton.next_power_of_2(d), BLOCK_N = triton.next_power_of_2(N)) and mask the extra "
               "lanes (offs_d < d) on every load and store")
DOT_HINT = ("tl.dot needs blocks of at least 16 along the inner dimension K on a GPU (its tensor-core "
            "instructions work on 16-wide fragments; the interpreter runs any size): make every block that tl.dot "
            "multiplies at least 16 wide, e.g. BLOCK_K = max(16, triton.next_power_of_2(K)), and mask the padding "
            "lanes with other=0.0, which adds nothing to the products")
_DOT_SIZE = re.compile(r"Input shapes should have M >= \d+, N >= \d+ and K >= \d+")
_LOOP_CARRIED = re.compile(r"Loop-carried variable (\w+) has initial type (.+?) but is re-assigned to (.+?) in loop")
_BLOCK_TYPE = re.compile(r"<\[([^\]]*)\],\s*(\w+)>")
_NOT_DEFINED = re.compile(r"NameError\W+'?(\w+)'? is not defined")
_GLOBAL = re.compile(r"Cannot access global variable (\w+) from within")
_TL_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64", "int32": "int32",
             "int64": "int64", "i32": "int32", "i64": "int64", "int1": "int1"}


def _type_parts(text: str):
    """``"<['16', '16'], fp32>"`` -> ``("(16, 16)", "fp32")``; a scalar type -> ``(None, "fp32")``."""
    m = _BLOCK_TYPE.search(text)
    if m is None:
        return None, text.strip()
    dims = [s.strip(" '\"") for s in m.group(1).split(",") if s.strip(" '\"")]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")", m.group(2)


def compile_hint(message: str, kernel: str = "", line: str = "", code: str = "", kind: str = "") -> str:
    """One sentence for a Triton compiler refusal, in the learner's terms (the compiler's own
    last line when it is not a known one). ``kind``: for a global the kernel reads, whether it is
    a Python ``function`` or a ``value``."""
    where = f" (in {kernel}, at `{code}`)" if kernel and code else (f" (in {kernel})" if kernel else "")
    everywhere = "so this kernel fails to compile on every GPU"
    fails = f"The interpreter runs it, but Triton compiles a loop only when every variable it carries keeps one type, {everywhere}"
    m = _LOOP_CARRIED.search(message)
    if m:
        name, before, after = m.groups()
        (shape0, dtype0), (shape1, dtype1) = _type_parts(before), _type_parts(after)
        tl_dtype = "tl." + _TL_DTYPE.get(dtype1, dtype1)
        if shape0 is None and shape1 is not None:
            return (f"loop-carried {name} must start as a block: tl.full({shape1}, value, {tl_dtype}) (or tl.zeros) "
                    f"before the loop, not a Python number; the loop makes {name} a {shape1} {dtype1} block. "
                    f"{fails}{where}")
        if shape0 is None and shape1 is None and dtype0.startswith("int") and dtype1.startswith(("fp", "bf")):
            return (f"loop-carried {name} must start as 0.0 (a float), not the integer 0: the loop makes it {dtype1}. "
                    f"{fails}{where}")

        def words(shape, dtype):
            return f"a {shape} {dtype} block" if shape else f"a {dtype} number"
        return (f"loop-carried {name} must keep one type: it starts as {words(shape0, dtype0)} and the loop makes it "
                f"{words(shape1, dtype1)}; create it before the loop with the shape and dtype the loop gives it (an "
                f"accumulator: tl.zeros((BLOCK_M, BLOCK_D), tl.float32)). {fails}{where}")
    if _DOT_SIZE.search(message):
        return f"{DOT_HINT}. The interpreter runs it, but {everywhere}{where}"
    m = _GLOBAL.search(message)
    if m:
        name = m.group(1)
        if kind == "function":
            return (f"{name} is a plain Python function: a kernel can only call @triton.jit functions, so put "
                    f"@triton.jit above def {name}. The interpreter runs it as Python, but {everywhere}{where}")
        return (f"the kernel reads the global {name}, a plain Python value: a compiled kernel reads only globals made "
                f"with tl.constexpr, so write {name} = tl.constexpr(...) or pass it to the kernel as an argument. The "
                f"interpreter reads it as Python, but {everywhere}{where}")
    m = _NOT_DEFINED.search(message)
    if m:
        name = m.group(1)
        return (f"{name} is read where the compiled kernel cannot see it: a name first assigned inside a loop (or "
                f"inside an if on a run-time value) does not exist after it once Triton compiles the kernel, though "
                f"the interpreter, being Python, keeps it. Assign {name} before the loop or the if, {everywhere}{where}")
    last = message.strip().splitlines()[-1] if message.strip() else "the compiler refused it"
    return f"your kernel runs in Triton's interpreter but does not compile for a GPU (sm_{SM}): {last[:400]}{where}"


def raised_hint(error: BaseException) -> str | None:
    """A named hint for an error the learner's call raised (on a GPU a compiler refusal, anywhere
    a block length that is not a power of two); None for any other error."""
    texts, cause, depth = [], error, 0
    while cause is not None and depth < 10:
        texts.append(f"{type(cause).__name__}: {cause}")
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    text = "\n".join(texts)
    if "arange's range must be a power of 2" in text:
        return ARANGE_HINT
    if _DOT_SIZE.search(text):
        return DOT_HINT
    if _LOOP_CARRIED.search(text) or ("CompilationError" in text and _NOT_DEFINED.search(text)):
        return compile_hint(text)
    m = _GLOBAL.search(text)
    if m and "CompilationError" in text:  # the compiler quotes the line: a call there means a function
        return compile_hint(text, kind="function" if re.search(rf"\b{m.group(1)}\s*\(", text) else "value")
    return None


# --------------------------------------------------------------------------- compiling for a GPU
#
# Triton's interpreter runs a kernel as Python and NumPy, so it accepts code that Triton's
# compiler refuses: a running max ``m = -float("inf")`` that the loop turns into a block (the
# compiler needs every loop-carried variable to keep one type), a name assigned inside a loop
# and read after it, a helper without ``@triton.jit``, a plain Python global. Such a kernel
# passes on a CPU and fails to compile on every GPU. :class:`CompileCheck` watches a call, records the kernels it launched
# in the interpreter with their arguments, and compiles each one, once per signature, through
# Triton's front end for sm_80 (the code generator and the IR verifier; no PTX, no ptxas, no
# files), reporting the compiler's complaints as plain text.

SM = 80  # the GPU the kernels are compiled for (an A100; its front end is the one every GPU runs)
MAX_COMPILES = 16  # per watched call
_TORCH_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int8": "i8",
                "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8", "bool": "i1",
                "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5"}
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion", "maxnreg")
_COMPILED: dict = {}  # (code, signature, constexprs, options, sm) -> (code, error dict or None)
_TWINS: dict = {}  # id(interpreted function) -> (it, its compiled twin)


class _Unavailable(Exception):
    """The compile step cannot judge this launch (a Triton whose internals differ, an argument it
    cannot type): nothing is reported to the learner."""


def _interpreted_class():
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - a Triton without the interpreter
        return None
    return InterpretedFunction


class CompileCheck(_spy.Watcher):
    """Compile, for a GPU, every kernel the watched call ran in Triton's interpreter.

    ``errors``: one ``{"kernel", "message", "line", "code", "kind"}`` per launch signature the
    compiler refused (``message``: the compiler's own sentence; ``line``/``code``: where, in the
    kernel; ``kind``: for a global it may not read, ``function`` or ``value``).
    On a GPU nothing runs in the interpreter, so nothing is compiled here (the launch itself
    compiled the kernel, and a refusal raised in the learner's call). Under the grader it is
    re-created in the learner's kernel (:class:`attnkit._spy.Watcher`), where the kernels live."""

    def __init__(self, sm: int = SM, limit: int = MAX_COMPILES):
        self.sm, self.limit = int(sm), int(limit)
        self.errors: list[dict] = []
        self.compiled = 0
        self.unavailable: list[str] = []
        self._launches: list = []
        self._patched = None
        self._raised = False

    def params(self) -> dict:
        return {"sm": self.sm, "limit": self.limit}

    def start(self) -> None:
        cls = _interpreted_class()
        original = cls.__dict__.get("run") if cls is not None else None
        if original is None:
            return
        watcher = self

        def run(fn_self, *args, _original=original, **kwargs):
            if not kwargs.get("warmup", False) and not _spy._PAUSE[0] and watcher in _spy.ACTIVE \
                    and len(watcher._launches) < 10 * watcher.limit:
                watcher._launches.append((fn_self, args, {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}))
            return _original(fn_self, *args, **kwargs)

        cls.run = run
        self._patched = (cls, original)

    def __exit__(self, exc_type, exc, tb):
        self._raised = exc_type is not None
        return super().__exit__(exc_type, exc, tb)

    def stop(self) -> None:
        if self._patched is not None:
            cls, original = self._patched
            cls.run = original
            self._patched = None
        self._settle()

    def _settle(self) -> None:
        """Compile the launches recorded so far (once). Under the grader ``report()`` comes before
        ``stop()`` (:func:`attnkit._spy.observing` reports, then leaves the watchers), so both settle."""
        import sys

        launches, self._launches = self._launches, []
        if self._raised or sys.exc_info()[0] is not None or not launches:
            return  # the call failed anyway: its own error says more
        seen = set()
        for kernel, args, kwargs in launches:
            try:
                key, job = _launch_key(kernel, args, kwargs, self.sm)
            except _Unavailable as e:
                self.unavailable.append(str(e)[:300])
                continue
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > self.limit:
                break
            try:
                error = _compile_once(key, job)
            except _Unavailable as e:
                self.unavailable.append(str(e)[:300])
                continue
            self.compiled += 1
            if error is not None:
                self.errors.append(error)

    def report(self) -> dict:
        self._settle()
        return {"errors": [dict(e) for e in self.errors[:8]], "compiled": self.compiled,
                "unavailable": self.unavailable[:4]}

    def absorb(self, report: dict) -> None:
        for e in list(report.get("errors") or ())[:8]:
            if isinstance(e, dict):
                self.errors.append({k: str(e.get(k, ""))[:2000] for k in ("kernel", "message", "line", "code", "kind")})
        try:
            self.compiled += int(report.get("compiled") or 0)
        except (TypeError, ValueError):
            pass
        self.unavailable += [str(s)[:300] for s in list(report.get("unavailable") or ())[:4]]

    def hint(self) -> str | None:
        """The first refusal, in the learner's terms (None when every kernel compiled)."""
        if not self.errors:
            return None
        e = self.errors[0]
        return compile_hint(e.get("message", ""), kernel=e.get("kernel", ""), line=e.get("line", ""),
                            code=e.get("code", ""), kind=e.get("kind", ""))


def _arg_type(value) -> str:
    """Triton's signature type of one non-constexpr launch argument."""
    import numbers

    if isinstance(value, torch.Tensor):
        name = str(value.dtype).replace("torch.", "")
        if name not in _TORCH_TYPES:
            raise _Unavailable(f"a tensor of dtype {value.dtype}")
        return "*" + _TORCH_TYPES[name]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, numbers.Integral):
        value = int(value)
        return "i32" if -2 ** 31 <= value < 2 ** 31 else ("i64" if -2 ** 63 <= value < 2 ** 63 else "u64")
    if isinstance(value, numbers.Real):
        return "fp32"
    raise _Unavailable(f"an argument of type {type(value).__name__}")


def _plain(value):
    """A constexpr value as a hashable key part."""
    value = getattr(value, "value", value)
    return value if isinstance(value, (int, float, bool, str, type(None))) else repr(value)


def _launch_key(kernel, args, kwargs, sm):
    """What one launch compiles to: a hashable key and the job (twin, signature, constexprs, options)."""
    import inspect

    import triton.language as tl

    fn = getattr(kernel, "fn", None)
    code = getattr(fn, "__code__", None)
    if code is None:
        raise _Unavailable("a kernel without Python code")
    try:
        params = list(inspect.signature(fn).parameters.values())
        bound = inspect.signature(fn).bind(*args, **{k: v for k, v in kwargs.items() if k in {p.name for p in params}})
    except TypeError as e:
        raise _Unavailable(f"arguments that do not bind: {e}") from None
    bound.apply_defaults()
    signature, constexprs = {}, {}
    for p in params:
        value = bound.arguments.get(p.name)
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        if "constexpr" in str(annotation) or isinstance(value, (tl.constexpr, tl.dtype)) or value is None:
            signature[p.name] = "constexpr"
            constexprs[p.name] = getattr(value, "value", value) if isinstance(value, tl.constexpr) else value
        else:
            signature[p.name] = _arg_type(value)
    options = {k: kwargs[k] for k in _OPTIONS if isinstance(kwargs.get(k), (int, bool))}
    key = (code, tuple(signature.items()), tuple((k, _plain(v)) for k, v in constexprs.items()),
           tuple(sorted(options.items())), sm)
    return key, (kernel, signature, constexprs, options)


def _probe(X, Y, N, BLOCK: tl.constexpr):  # noqa: F821 - tl is given when the probe is compiled
    """A kernel the compile step must accept (what the course's kernels use), compiled once per
    process before any learner's kernel: if this Triton's compiler cannot be driven the way
    :func:`_compile` drives it, the compile step says nothing rather than something wrong."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # noqa: F821
    cols = tl.arange(0, BLOCK)  # noqa: F821
    m = tl.full((BLOCK,), float("-inf"), tl.float32)  # noqa: F821
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)  # noqa: F821
    for start in range(0, N, BLOCK):
        c = start + cols
        x = tl.load(X + rows[:, None] * N + c[None, :], mask=(rows[:, None] < N) & (c[None, :] < N),  # noqa: F821
                    other=0.0).to(tl.float32)  # noqa: F821
        m_new = tl.maximum(m, tl.max(x, axis=1))  # noqa: F821
        p = tl.exp(x - tl.where(m_new == float("-inf"), 0.0, m_new)[:, None])  # noqa: F821
        acc = acc * tl.exp(m - m_new)[:, None] + tl.dot(p, x.T)  # noqa: F821
        m = m_new
    total = tl.sum(acc, axis=1) + tl.cdiv(N, BLOCK)  # noqa: F821
    tl.store(Y + rows, total.to(Y.dtype.element_ty), mask=rows < N)


_PROBED: list = []  # [None] when the probe compiled, [reason] when it did not


def _front_end_works(sm: int) -> None:
    """Raise :class:`_Unavailable` when the probe kernel does not compile here."""
    import types

    if not _PROBED:
        try:
            import triton.language as tl

            interpreted = _interpreted_class()
            scope = dict(_probe.__globals__, tl=tl)
            fn = types.FunctionType(_probe.__code__, scope, "_probe", None, None)
            fn.__annotations__ = dict(_probe.__annotations__)
            fn.__module__ = _probe.__module__
            kernel = interpreted(fn) if interpreted is not None else None
            if kernel is None:
                raise _Unavailable("no interpreter")
            error = _compile(kernel, {"X": "*fp32", "Y": "*fp32", "N": "i32", "BLOCK": "constexpr"}, {"BLOCK": 16},
                             {"num_warps": 4}, sm)
            _PROBED.append(None if error is None else f"the probe kernel: {error.get('message', '')[:200]}")
        except _Unavailable as e:
            _PROBED.append(str(e))
        except Exception as e:  # noqa: BLE001
            _PROBED.append(f"{type(e).__name__}: {str(e)[:200]}")
    if _PROBED[0] is not None:
        raise _Unavailable(f"the compile step does not work with this Triton ({_PROBED[0]})")


def _compile_once(key, job):
    hit = _COMPILED.get(key)
    if hit is not None:
        return hit[1]
    _front_end_works(key[-1])
    error = _compile(*job, sm=key[-1])
    if len(_COMPILED) > 512:
        _COMPILED.clear()
    _COMPILED[key] = (key[0], error)
    return error


def _compile(kernel, signature, constexprs, options, sm):
    """Triton's front end for one launch: None when it compiles, else the learner's error as data."""
    import contextlib
    import io

    try:
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.compiler.compiler import make_backend
        from triton.compiler.errors import CompilationError
    except ImportError as e:
        raise _Unavailable(f"this Triton has no compiler front end to call: {e}") from None
    try:
        with _compiler_view():
            twin = _twin(kernel)
            target = GPUTarget("cuda", sm, 32)
            backend = make_backend(target)
            src = ASTSource(fn=twin, signature=signature, constexprs=constexprs)
            opts = backend.parse_options(dict(options, **src.parse_options()))
            context = ir.context()
            ir.load_dialects(context)
            backend.load_dialects(context)
            with contextlib.redirect_stdout(io.StringIO()):  # a module that fails to verify is printed
                src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), context)
    except CompilationError as e:
        return _describe(e, kernel)
    except _Unavailable:
        raise
    except Exception as e:  # noqa: BLE001 - Triton's internals, not the learner's kernel
        raise _Unavailable(f"{type(e).__name__}: {str(e)[:200]}") from None
    return None


def _describe(e, kernel) -> dict:
    """A CompilationError as plain data: the compiler's sentence, the kernel's line and its code."""
    cause, depth = e, 0
    while cause.__cause__ is not None and depth < 8:
        cause, depth = cause.__cause__, depth + 1
    message = str(getattr(e, "error_message", None) or "")
    if cause is not e:
        message = f"{type(cause).__name__}: {cause}"
    if any(s in message for s in ("InterpreterError", "InterpretedFunction", "libtriton", "interpreter", "handle.data")):
        raise _Unavailable(f"a function the compile step could not translate: {message[:200]}")
    node, src = getattr(e, "node", None), getattr(e, "src", None) or ""
    lineno = getattr(node, "lineno", None)
    code = src.split("\n")[lineno - 1].strip() if lineno and lineno <= len(src.split("\n")) else ""
    kind = ""
    m = _GLOBAL.search(message)
    if m:
        value = getattr(getattr(kernel, "fn", None), "__globals__", {}).get(m.group(1))
        kind = "function" if callable(value) and not isinstance(value, type) else "value"
    return {"kernel": str(getattr(kernel, "__name__", "kernel")), "message": message.strip()[:2000],
            "line": str(lineno or ""), "code": code[:300], "kind": kind}


def _twin(f):
    """The compiled-kernel twin (``JITFunction``) of an interpreted function, whose globals and
    closure see the twins of the interpreted functions it calls (cached)."""
    import inspect
    import types

    from triton.runtime.jit import JITFunction

    interpreted = _interpreted_class()
    hit = _TWINS.get(id(f))
    if hit is not None and hit[0] is f:
        return hit[1]
    fn = f.fn
    kwargs = dict(getattr(f, "kwargs", None) or {})
    accepted = set(inspect.signature(JITFunction.__init__).parameters)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if (getattr(fn, "__module__", "") or "").startswith("triton."):
        twin = JITFunction(fn, **kwargs)  # Triton's own library: its module is patched while compiling
        _TWINS[id(f)] = (f, twin)
        return twin
    scope = dict(fn.__globals__)
    cells = None
    if fn.__closure__:
        cells = tuple(types.CellType(c.cell_contents) if _filled(c) else c for c in fn.__closure__)
    copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, cells)
    for attr in ("__kwdefaults__", "__annotations__", "__qualname__", "__doc__", "__module__"):
        setattr(copy, attr, getattr(fn, attr))
    twin = JITFunction(copy, **kwargs)
    _TWINS[id(f)] = (f, twin)
    for name in _names(fn.__code__):
        if isinstance(scope.get(name), interpreted):
            scope[name] = _twin(scope[name])
    if cells:
        for cell in cells:
            if _filled(cell) and isinstance(cell.cell_contents, interpreted):
                cell.cell_contents = _twin(cell.cell_contents)
    return twin


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _names(code) -> set:
    found = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            found |= _names(const)
    return found


@contextlib.contextmanager
def _compiler_view():
    """While compiling, Triton's language as the compiler sees it: its library functions
    (``tl.max``, ``tl.cdiv``, the ``x.to``-style methods of blocks) as compiled twins, and the
    builtins the interpreter left patched in modules it does not restore (``tl.core`` after a
    launch) back to the compiler's own. Everything is put back as it was afterwards."""
    import sys

    import triton.language as tl

    interpreted = _interpreted_class()
    saved = []

    def put(owner, attr, value):
        saved.append((owner, attr, vars(owner)[attr]))
        setattr(owner, attr, value)

    try:
        if interpreted is not None:
            modules = [m for n, m in list(sys.modules.items())
                       if m is not None and (n == "triton.language" or n.startswith("triton.language."))]
            owners = modules + [tl.tensor, tl.core.dtype] + [getattr(tl.core, n) for n in ("tensor_descriptor_base",)
                                                              if isinstance(getattr(tl.core, n, None), type)]
            for owner in owners:
                for attr, value in list(vars(owner).items()):
                    if isinstance(value, interpreted):
                        put(owner, attr, _twin(value))
                    elif _interpreter_made(value):
                        clean = _unpatched(value, attr, tl)
                        if clean is not None:
                            put(owner, attr, clean)
                    else:
                        inner = _wrapped(value, interpreted) if owner is tl.tensor else None
                        if inner is not None:
                            put(owner, attr, _twin(inner))
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def _interpreter_made(value) -> bool:
    """Whether ``value`` is one of the interpreter's patches (defined in its module)."""
    from triton.runtime import interpreter

    f = value.fget if isinstance(value, property) else value
    code = getattr(f, "__code__", None)
    return code is not None and code.co_filename == getattr(interpreter, "__file__", None)


def _unpatched(value, attr, tl):
    """The builtin an interpreter patch stands for: the one it wraps, or the same name in
    ``triton.language`` when that one is clean; None when neither is known."""
    for _ in range(8):
        member = (getattr(value, "__kwdefaults__", None) or {}).get("member")
        if member is None or not _interpreter_made(value):
            break
        value = member
    if not _interpreter_made(value):
        return value
    alt = vars(tl).get(attr)
    return alt if alt is not None and not _interpreter_made(alt) else None


def _wrapped(value, interpreted):
    """The interpreted function a block method forwards to, if it is one."""
    for cell in getattr(value, "__closure__", None) or ():
        if _filled(cell) and isinstance(cell.cell_contents, interpreted):
            return cell.cell_contents
    return None
