"""Render the Jinja kernel templates into Triton modules, cache them on disk, import them.

render(kernel, spec, config) -> source text; load_kernel(...) -> the @triton.jit function.
`kernel` is a variant stem of mhfgen.registry; the variant supplies the template, its
folder and the static parameters, so this module knows no kernel by name.
Jinja decides static structure only (which loops, masks and dot operands exist); block
sizes stay `tl.constexpr` arguments, num_warps/num_stages launch options.

NOTE: generated modules are written under a content-hash name, atomically (temp file +
os.replace), into a private cache folder (0700, refused when another user owns it or may
write to it: mhfgen.paths.private_dir). Triton's JIT reads the kernel's source through
`inspect`, so the code must live in a real file; the hash name makes concurrent processes
and repeated renders agree on one file without locks. A module is executed from the
source just rendered in memory, after the file is checked to hold exactly that source,
and never from bytecode: a .pyc planted in __pycache__ beside it is never read, and
`inspect` is served the same verified lines (linecache).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import linecache
import logging
import os
import shutil
import sys
import tempfile
import threading
from functools import cache, lru_cache
from pathlib import Path

import jinja2
import jinja2.meta

from . import paths, registry
from .spec import INTERPRETER, KernelSpec
from .tiling import pow2_ceil

log = logging.getLogger(__name__)


def _environment(folder: str | None = None) -> jinja2.Environment:
    """The Jinja environment of a template folder (default: the built-in variants' folder)."""
    return _environment_of(folder or str(paths.templates_dir()))


@cache
def _environment_of(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # the sizes a template derives from the spec, computed as the launchers compute them
    env.filters["pow2_ceil"] = pow2_ceil
    return env


_environment.cache_clear = _environment_of.cache_clear  # forget every folder's environment


def template_name(kernel: str) -> str:
    """<stem>.py.jinja, the template of a registered variant (RegistryError otherwise)."""
    return registry.get(kernel).template_name


@cache
def template_hash(kernel: str) -> str:
    """sha256 (16 hex digits) of the variant's template and every template file it
    imports or includes (template_files): the part of the tuning key that invalidates
    stored configs when the kernel code changes."""
    variant = registry.get(kernel)
    digest = hashlib.sha256()
    for name in template_files(kernel):
        digest.update((variant.templates_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


def template_files(kernel: str) -> list[str]:
    """The variant's template, then the files of its folder it imports or includes,
    transitively, in the order they are first referenced (found by parsing: a shared
    macro file needs no declaration)."""
    variant = registry.get(kernel)
    env = _environment(str(variant.templates_dir()))
    files, todo = [], [variant.template_name]
    while todo:
        name = todo.pop(0)
        if name in files:
            continue
        files.append(name)
        source = env.loader.get_source(env, name)[0]
        todo += [n for n in jinja2.meta.find_referenced_templates(env.parse(source)) if n]
    return files


def static_params(kernel: str, spec: KernelSpec, config) -> dict:
    """The parts of (spec, config) that change the generated code's structure (the
    variant's static_params, after its config is checked against the spec)."""
    variant = registry.get(kernel)
    return variant.static_params(spec, variant.check(spec, config))


def render(kernel: str, spec: KernelSpec, config) -> str:
    """The generated source of variant `kernel` for `spec` and `config`: the same path
    for every family (a Gluon template renders and loads as a Triton-language one)."""
    variant = registry.get(kernel)
    params = static_params(kernel, spec, config)
    static = {
        k: (v if k != "chunks" else [(c.off, c.width, c.masked) for c in v])
        for k, v in params.items()
    }
    precision = ', input_precision="ieee"' if spec.dtype == "float32" else ""
    template = _environment(str(variant.templates_dir())).get_template(variant.template_name)
    return template.render(
        template_name=_shown_path(variant),
        template_hash=template_hash(kernel),
        spec=spec,
        static=static,
        precision=precision,
        **params,
    )


def _shown_path(variant) -> str:
    """The template's path as the generated module's provenance line shows it: from the
    package's parent for a built-in variant (mhfgen/variants/<stem>.py.jinja), else the
    file name."""
    path = variant.templates_dir() / variant.template_name
    try:
        return path.resolve().relative_to(paths.package_dir().parent).as_posix()
    except ValueError:
        return variant.template_name


def _clear_caches() -> None:
    template_hash.cache_clear()
    code_hash.cache_clear()
    _loaded.clear()


@lru_cache(maxsize=4096)
def code_hash(kernel: str, spec: KernelSpec, config) -> str:
    """sha256 (16 hex digits) of the code generated for (kernel, spec, config), the
    template-hash comment left out: it changes only when this config's kernel code does.

    A stored winner keeps it beside its template hash, so a template edit that leaves a
    config's code as it was (a new knob, a branch that config does not take) does not
    invalidate that config (mhfgen.tuning.lookup.still_current). The provenance line is
    hashed in one fixed form (HASHED_PROVENANCE)."""
    source = render(kernel, spec, config)
    body = "\n".join(
        HASHED_PROVENANCE.format(name=registry.get(kernel).template_name)
        if line.startswith(PROVENANCE)
        else line
        for line in source.splitlines()
        if not line.startswith("# template hash:")
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


#: the generated module's provenance line (the template's name follows)
PROVENANCE = "# generated by mhfgen from "
#: the one form code_hash hashes that line in, wherever the template lives, so that
#: moving a template leaves the code hashes of stored winners valid (the form it had
#: when templates lived in a top-level templates/ folder)
HASHED_PROVENANCE = PROVENANCE + "templates/{name}; do not edit"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_lock = threading.Lock()
_loaded: dict[tuple, object] = {}
_modules: dict[Path, object] = {}


registry.on_change(_clear_caches)


def kernel_dir() -> Path:
    """The folder of generated kernel sources (created 0700, checked private)."""
    return paths.private_cache_subdir("kernels")


def load_kernel(kernel: str, spec: KernelSpec, config, entry: str | None = None):
    """Render (or reuse) and import the module of `kernel`; return its @triton.jit kernel
    (`<kernel>_kernel`, or the function named `entry` where a module holds several;
    a Gluon module's @gluon.jit function the same way).

    The 'interpreter' target needs Triton's interpreter switched on (TRITON_INTERPRET=1)
    before triton was imported; see mhfgen.device.enable_interpreter_default.
    """
    params = static_params(kernel, spec, config)
    entry = entry or f"{kernel}_kernel"
    key = (kernel, spec, tuple(sorted(params.items())), entry)
    fn = _loaded.get(key)
    if fn is not None:
        return fn
    with _lock:
        fn = _loaded.get(key)
        if fn is None:
            source = render(kernel, spec, config)
            digest = hashlib.sha256(source.encode()).hexdigest()[:20]
            path = _written(f"{kernel}_{digest}.py", source)
            module = _modules.get(path)
            if module is None:
                module = _import(
                    path, source, f"mhfgen_generated.{kernel}_{digest}", spec.target == INTERPRETER
                )
                _modules[path] = module
            fn = getattr(module, entry)
            _loaded[key] = fn
    return fn


_fallback: Path | None = None


def _written(name: str, source: str) -> Path:
    """The file `name` holding `source` in kernel_dir(), written (atomically) if absent or
    different. Where that folder cannot be written or trusted (read-only, not a folder, a
    file of that name replaced by a folder, owned by another user or writable by others:
    mhfgen.paths.private_dir) a private temporary folder of this process serves
    instead, with one logged warning: a cache that cannot be written must not stop the
    kernels from running."""
    global _fallback
    try:
        path = kernel_dir() / name
        if not path.is_file() or path.read_text() != source:
            _write_atomic(path, source)
        return path
    except OSError as exc:
        path = paths.cache_dir() / "kernels" / name
        if _fallback is None:
            try:
                _fallback = Path(tempfile.mkdtemp(prefix="mhfgen-kernels-"))
            except OSError as tmp_exc:
                raise RuntimeError(
                    f"mhfgen: cannot write generated kernels to {path.parent} ({exc}) nor to "
                    f"a temporary folder ({tmp_exc}); set MHFGEN_CACHE_DIR to a writable "
                    f"folder"
                ) from None
            atexit.register(shutil.rmtree, _fallback, True)
            log.warning(
                "mhfgen: cannot write generated kernels to %s (%s); using %s for "
                "this process. Set MHFGEN_CACHE_DIR to a writable folder to keep them.",
                path.parent,
                exc,
                _fallback,
            )
    path = _fallback / name
    if not path.is_file():
        _write_atomic(path, source)
    return path


def _import(path: Path, source: str, name: str, interpret: bool):
    """The module `name` of the generated `source`, which `path` holds: compiled from the
    string (no loader, so no bytecode cache is read or written) with `path` as its file,
    and `path`'s lines served from memory to `inspect` (Triton's JIT reads its kernels'
    source through it)."""
    if interpret:
        from .device import require_interpreter

        require_interpreter()
    if path.read_text() != source:  # replaced since it was written or checked
        raise RuntimeError(
            f"mhfgen: the generated kernel {path} changed on disk while it "
            f"was loaded; another process writes to the kernel cache "
            f"({path.parent})"
        )
    filename = str(path)
    code = compile(source, filename, "exec", dont_inherit=True)
    module_spec = importlib.util.spec_from_loader(name, loader=None, origin=filename)
    module = importlib.util.module_from_spec(module_spec)
    module.__file__ = filename
    # mtime None: linecache.checkcache never re-reads the file behind these lines
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
