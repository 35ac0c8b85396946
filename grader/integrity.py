"""Tamper detection: did student code replace what the tests rely on?

Before any student code runs, the grader imports the assertion helpers (``numpy.testing``,
``torch.testing``, ``attnkit.checks`` and the reference modules) into the fresh kernel and
takes a fingerprint: the identity of every function and class they expose, of every
builtin, of the ``torch`` functions assertions use and of ``torch.Tensor``'s attributes, of the IPython machinery that
decides whether a cell failed (``run_cell``, ``showtraceback``, input and AST transformers,
event callbacks) and of ``sys`` hooks (trace, profile, excepthook). The same fingerprint is
taken again just before and just after every test cell, and compared *outside* the kernel.
A test cell during which anything had been replaced earns nothing, and the row's reason
names what was replaced.

Limits, stated plainly: code in the kernel can in principle subvert anything in the same
process, including this fingerprint. What it cannot reach is the grader process, the hidden
tests (the sandbox hides them) and the verdict, which comes from the kernel's
``execute_reply`` status compared here, not from printed output.
"""

from __future__ import annotations

import json
import secrets

WATCHED_MODULES = (
    "numpy", "numpy.testing", "torch.testing", "torch.nn.functional",
    "attnkit", "attnkit.checks", "attnkit.checks._harness", "attnkit.checks.basics",
    "attnkit.checks.masks", "attnkit.checks.heads", "attnkit.checks.positions",
    "attnkit.checks.inference", "attnkit.softmax", "attnkit.attention", "attnkit.similarity",
    "attnkit.masks", "attnkit.heads", "attnkit.rope", "attnkit.alibi", "attnkit.gqa",
    "attnkit.kv_cache", "attnkit.positions", "attnkit.mha",
)
# torch itself rewrites some of its own attributes lazily (importing torch._dynamo wraps
# torch.manual_seed), so only the functions assertions lean on are watched there.
TORCH_FUNCTIONS = ("allclose", "equal", "isclose", "isnan", "isinf", "isfinite", "all", "any", "abs", "max",
                   "min", "sum", "mean", "exp", "log", "softmax", "tensor", "as_tensor", "zeros", "ones", "full",
                   "randn", "rand", "arange", "stack", "cat", "where", "matmul", "einsum", "testing", "Tensor")
SHELL_METHODS = ("run_cell", "run_cell_async", "run_ast_nodes", "run_code", "showtraceback",
                 "_showtraceback", "showsyntaxerror", "transform_cell", "should_run_async",
                 "_run_cell", "get_exception_only")
KERNEL_METHODS = ("do_execute", "execute_request", "_publish_execute_input")

_SNAPSHOT = r'''
def {fn}():
    import builtins, hashlib, json, sys, importlib
    for _m in {modules!r}:
        try:
            importlib.import_module(_m)
        except Exception:
            pass
    prints = {{}}

    def add(label, obj):
        code = getattr(obj, "__code__", None) or getattr(getattr(obj, "__func__", None), "__code__", None)
        digest = hashlib.sha1(code.co_code).hexdigest()[:10] if code is not None else ""
        prints[label] = "%x:%x:%s" % (id(obj), id(code), digest)

    for name in {modules!r}:
        mod = sys.modules.get(name)
        prints["module " + name] = "%x" % id(mod)
        for attr, value in list(vars(mod).items()) if mod is not None else []:
            if callable(value) and not attr.startswith("__"):
                add(name + "." + attr, value)
    for attr, value in vars(builtins).items():
        if callable(value) and attr not in ("_", "__", "___"):
            add("builtins." + attr, value)
    import torch
    prints["module torch"] = "%x" % id(sys.modules.get("torch"))
    for attr in {torch_functions!r}:
        add("torch." + attr, getattr(torch, attr, None))
    for attr, value in list(vars(torch.Tensor).items()):
        if callable(value):
            add("torch.Tensor." + attr, value)
    def watch_methods(obj, methods, kind):
        for cls in type(obj).__mro__:
            for attr in methods:
                if attr in vars(cls):
                    add("%s.%s" % (cls.__name__, attr), vars(cls)[attr])
        for attr in methods:
            if attr in vars(obj):
                prints["%s instance override %s" % (kind, attr)] = "%x" % id(vars(obj)[attr])

    shell = get_ipython()
    watch_methods(shell, {shell_methods!r}, "shell")
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        watch_methods(kernel, {kernel_methods!r}, "kernel")
    manager = getattr(shell, "input_transformer_manager", None)
    transformers = [getattr(shell, "input_transformers_post", [])]
    for attr in ("cleanup_transforms", "line_transforms", "token_transformers"):
        transformers.append(getattr(manager, attr, []))
    prints["input transformers"] = repr([[id(t) for t in group] for group in transformers])
    prints["ast transformers"] = repr([id(t) for t in shell.ast_transformers])
    # Libraries register callbacks too (matplotlib's inline backend on first pyplot import):
    # only callbacks whose code does not live in an installed package count.
    installed = tuple(p for p in {{sys.prefix, sys.base_prefix, sys.exec_prefix}} if p)

    def foreign(f):
        code = getattr(f, "__code__", None) or getattr(getattr(f, "__func__", None), "__code__", None)
        return code is None or not code.co_filename.startswith(installed)

    prints["event callbacks"] = repr({{k: [id(f) for f in v if foreign(f)] for k, v in shell.events.callbacks.items()}})
    prints["sys.excepthook"] = "%x" % id(sys.excepthook)
    prints["sys.trace"] = "%x" % id(sys.gettrace())
    prints["sys.profile"] = "%x" % id(sys.getprofile())
    prints["sys.displayhook"] = "%x" % id(sys.displayhook)
    return json.dumps(prints)
'''


class Fingerprinter:
    """Builds the fingerprint code for one kernel run, under a name student code cannot predict."""

    def __init__(self):
        self.fn = "_attn_grade_fp_" + secrets.token_hex(8)
        self.define = _SNAPSHOT.format(fn=self.fn, modules=WATCHED_MODULES, shell_methods=SHELL_METHODS,
                                       kernel_methods=KERNEL_METHODS, torch_functions=TORCH_FUNCTIONS)

    def code(self) -> str:
        """Code to execute: (re)defines the function, so a replaced copy in the kernel is ignored."""
        return self.define

    def expression(self) -> dict:
        return {"fp": f"{self.fn}()"}

    @staticmethod
    def parse(user_expressions: dict) -> dict | None:
        value = user_expressions.get("fp", {})
        if value.get("status") != "ok":
            return None
        text = value.get("data", {}).get("text/plain", "")
        try:
            import ast
            return json.loads(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            return None


def changed(baseline: dict, current: dict | None) -> list[str]:
    """Names whose fingerprint differs from the baseline (a missing fingerprint is tampering)."""
    if current is None:
        return ["the fingerprint itself (it could not be taken)"]
    replaced = {k for k, v in baseline.items() if current.get(k) != v}
    replaced |= {k for k in current if k not in baseline and "instance override" in k}
    return sorted(replaced)
