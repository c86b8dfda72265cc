"""Every file the tool writes goes through here: one `Outputs` transaction per command.

Each output is staged beside its target (a temp file, or for a model a temp folder holding the
model and its external data file) and `commit()` puts all of them in place at the end of the
command; on an error nothing is put in place and the staged files go (`discard`, also when the
`with` block raises). So a command writes all of its outputs or none, and a failed run leaves
the previous outputs intact.

Targets (DESIGN.md, conventions): `-` is stdout (text outputs); a character device or a FIFO
(`/dev/null`, `/dev/stdout`) is written through at commit; a symlink is followed and its target
replaced; a regular file or a missing path is replaced by a rename. A directory, a missing
folder, a parent that is not a folder, or any of the command's inputs (a model's external data
file included) is refused with a one-line `BadInput` before any work. New files get the mode
a plain `open()` gives under the user's umask; a replaced file keeps its mode.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import BadInput

PROTO_LIMIT = 1_800_000_000  # protobuf cannot serialize 2 GiB: bigger models always use external data


@dataclass
class _Target:
    path: str            # as the user gave it
    real: Path | None    # the file to replace or write through (None for stdout)
    kind: str            # "stdout" | "stream" | "file"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def resolve_target(path: str | os.PathLike) -> _Target:
    """Where an output goes, or BadInput saying why it cannot go there."""
    text = os.fspath(path)
    if text == "-":
        return _Target(text, None, "stdout")
    if not text:
        raise BadInput("an output path is empty")
    real = Path(os.path.realpath(text))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise BadInput(f"{text}: {_first_file(real)} is not a folder") from None
    except OSError as e:
        raise BadInput(f"{text}: cannot write ({e.strerror})") from None
    if st is not None:
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            return _Target(text, real, "stream")
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{text}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{text}: not a regular file, a device or a FIFO")
    parent = real.parent
    if not parent.exists():
        raise BadInput(f"{text}: folder {parent} does not exist")
    if not parent.is_dir():
        raise BadInput(f"{text}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{text}: folder {parent} is not writable")
    return _Target(text, real, "file")


def _first_file(path: Path) -> Path:
    """The first component of `path` that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


class Outputs:
    """The outputs of one command, staged and committed together.

    `inputs` are the files the command reads (models, their external data, masks, profiles):
    none of them may be named as an output.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()):
        self.inputs = [Path(os.path.realpath(p)) for p in inputs if p is not None and os.fspath(p) != "-"]
        self._claimed: dict[Path | str, tuple[str, tuple[str, ...]]] = {}
        self._data_of_inputs: list[Path] | None = None  # external data files of input models, read on demand
        self._staged: list[tuple[_Target, Callable[[], None], Callable[[], None]]] = []
        self.written: list[str] = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def add_inputs(self, paths: Iterable[str | os.PathLike]) -> None:
        """More input files (a model's external data, once loaded): claimed outputs are checked again."""
        self.inputs += [Path(os.path.realpath(p)) for p in paths]
        claimed, self._claimed = self._claimed, {}
        for path, companions in claimed.values():
            self._claim(path, companions=companions)

    # ---- claiming ---------------------------------------------------------------------------
    def claim(self, path: str | os.PathLike | None, stdout: bool = True, companions: Iterable[str] = ()
              ) -> _Target | None:
        """Check early that `path` can be written (and its `companions` beside it, e.g. an external
        data file), is no input and no other output of this command (a file or stdout claimed
        twice is refused; staging an output claimed before is not a second claim)."""
        return self._claim(path, stdout, companions, again=False)

    def _claim(self, path: str | os.PathLike | None, stdout: bool = True, companions: Iterable[str] = (),
               again: bool = True) -> _Target | None:
        if path is None:
            return None
        target = resolve_target(path)
        if target.kind == "stdout" and not stdout:
            raise BadInput(f"{target.path}: this output cannot go to stdout; give a file name")
        key = target.real if target.real is not None else "-"
        companions = tuple(companions)
        mine = {key} | ({target.real.parent / c for c in companions} if target.kind == "file" else set())
        for other, (given, theirs) in self._claimed.items():
            if other == key and (again or target.kind == "stream"):
                continue
            taken = {other} | ({other.parent / c for c in theirs} if isinstance(other, Path) else set())
            if mine & taken:
                if target.kind == "stdout":
                    raise BadInput("-: named twice as an output of this command (stdout takes one of --json, --csv, "
                                   "--md, --masks-out; give the others file names)")
                raise BadInput(f"{target.path}: named twice as an output of this command"
                               f"{'' if given == target.path else f' (also as {given})'}")
        self._claimed[key] = (target.path, companions)
        checked = [target.real] if target.real is not None and target.kind == "file" else []
        if target.real is not None and target.kind == "file":
            checked += [target.real.parent / c for c in companions]
        for p in checked:
            for i in self.inputs + (self._input_data() if p.exists() else []):
                if _same(p, i):
                    raise BadInput(f"{target.path}: is an input of this command; give another output path")
            if p != target.real and p.is_dir():
                raise BadInput(f"{target.path}: its data file {p} is a directory; give another output path")
        return target

    def _input_data(self) -> list[Path]:
        """The external data files that input ONNX models read (an output must not replace them)."""
        if self._data_of_inputs is None:
            import onnx
            found = []
            for i in self.inputs:
                try:
                    if not i.is_file():
                        continue
                    m = onnx.load(str(i), load_external_data=False)
                except Exception:  # not a model: a masks file, a profile
                    continue
                found += [Path(os.path.realpath(i.parent / e.value)) for t in _tensors(m.graph)
                          for e in t.external_data if e.key == "location"]
            self._data_of_inputs = found
        return self._data_of_inputs

    # ---- staging ----------------------------------------------------------------------------
    def text(self, path: str | os.PathLike, text: str) -> Path | None:
        """Stage a text output (UTF-8); `-` is stdout. Returns the staged file (None for a stream)."""
        return self.data(path, text.encode("utf-8"))

    def data(self, path: str | os.PathLike, data: bytes) -> Path | None:
        """Stage a bytes output; returns the staged file (None for stdout, a device or a FIFO)."""
        target = self._claim(path)
        if target.kind == "stdout":
            self._staged.append((target, lambda: _to_stdout(data), lambda: None))
            return None
        if target.kind == "stream":
            self._staged.append((target, lambda: _write_through(target.real, data), lambda: None))
            return None
        tmp = _temp_file(target.real)
        with open(tmp, "wb") as fh:
            fh.write(data)
        self._stage_file(target, tmp)
        return tmp

    def file(self, path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
        """Stage an output that a library writes to a file name (a plot): `write(temp_path)`."""
        target = self._claim(path, stdout=False)
        if target.kind == "stream":
            folder = Path(tempfile.mkdtemp(prefix=".morphonnx."))
            tmp = folder / f"out{suffix}"
            write(str(tmp))
            data = tmp.read_bytes()
            shutil.rmtree(folder, ignore_errors=True)
            self._staged.append((target, lambda: _write_through(target.real, data), lambda: None))
            return
        tmp = _temp_file(target.real, suffix)
        try:
            write(str(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._stage_file(target, tmp)

    def model(self, path: str | os.PathLike, model, external: bool = False,
              base_dir: str | os.PathLike | None = None, move: bool = False) -> Path:
        """Stage an ONNX model; return the staged model file, which reads exactly as the target
        will (its external data file, if any, beside it under its final name). Tensors of
        `model` stored as external data in files under `base_dir` are copied to that file
        (`move`: the one file they are in is moved there; `model` is not to be used after)."""
        name = Path(os.path.realpath(os.fspath(path))).name
        data_name = name + ".data"
        target = self._claim(path, stdout=False, companions=[data_name])
        external = external or _tensor_bytes(model) > PROTO_LIMIT or (base_dir is not None and _has_external(model))
        if target.kind == "stream":
            if external:
                raise BadInput(f"{target.path}: a model with external data cannot be written to a device or FIFO")
            folder = Path(tempfile.mkdtemp(prefix=".morphonnx."))
        else:
            folder = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.real.parent))
        try:
            staged = folder / name
            write_model(model, staged, data_name if external else None, base_dir, move)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if target.kind == "stream":
            self._staged.append((target, lambda: (_write_through(target.real, staged.read_bytes()),
                                                  shutil.rmtree(folder, ignore_errors=True)),
                                 lambda: shutil.rmtree(folder, ignore_errors=True)))
            return staged
        final_data = target.real.parent / data_name
        old_data = _external_file_of(target.real, data_name)

        def put() -> None:
            mode = _mode_for(target.real)
            if (folder / data_name).exists():
                os.chmod(folder / data_name, _mode_for(final_data))
                os.replace(folder / data_name, final_data)
            elif old_data:
                final_data.unlink(missing_ok=True)  # the previous model's data file, now stale
            os.chmod(staged, mode)
            os.replace(staged, target.real)
            shutil.rmtree(folder, ignore_errors=True)

        self._staged.append((target, put, lambda: shutil.rmtree(folder, ignore_errors=True)))
        return staged

    def _stage_file(self, target: _Target, tmp: Path) -> None:
        def put() -> None:
            os.chmod(tmp, _mode_for(target.real))
            os.replace(tmp, target.real)
        self._staged.append((target, put, lambda: tmp.unlink(missing_ok=True)))

    # ---- the end ----------------------------------------------------------------------------
    def commit(self) -> list[str]:
        """Put every staged output in place; return their paths as given."""
        staged, self._staged = self._staged, []
        for target, put, _ in staged:
            put()
            self.written.append(target.path)
        return self.written

    def discard(self) -> None:
        """Remove every staged output that was not committed."""
        staged, self._staged = self._staged, []
        for _, _, drop in staged:
            drop()


def write_text(path: str | os.PathLike, text: str, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Write one text output (the API's single-file writes: masks, profiles)."""
    with Outputs(inputs) as out:
        out.text(path, text)
        out.commit()


def _temp_file(real: Path, suffix: str = "") -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=suffix or ".tmp", dir=real.parent)
    os.close(fd)
    return Path(tmp)


def _mode_for(real: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        return _umask_mode()


def _to_stdout(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def _write_through(real: Path, data: bytes) -> None:
    with open(real, "wb") as fh:
        fh.write(data)


def _external_file_of(model_path: Path, data_name: str) -> bool:
    """True if the model now at `model_path` keeps its tensors in `data_name`."""
    if not model_path.is_file():
        return False
    import onnx
    try:
        old = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return False
    return any(e.key == "location" and e.value == data_name
               for t in old.graph.initializer for e in t.external_data)


# ---- ONNX models --------------------------------------------------------------------------------

def _tensors(graph) -> Iterable:
    """Initializers of a graph and of its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _nbytes(t) -> int:
    from onnx import helper
    n = 1
    for d in t.dims:
        n *= d
    import numpy as np
    try:
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return len(t.raw_data)


def _tensor_bytes(model) -> int:
    return sum(_nbytes(t) for t in _tensors(model.graph))


def _goes_external(t) -> bool:
    from .weights import goes_external
    return goes_external(_nbytes(t), t.data_type)


def _has_external(model) -> bool:
    from onnx import TensorProto
    return any(t.data_location == TensorProto.EXTERNAL for t in _tensors(model.graph))


def write_model(model, path: str | os.PathLike, data_name: str | None = None,
                base_dir: str | os.PathLike | None = None, move: bool = False) -> None:
    """Write `model` to `path`; with `data_name`, large tensors go to that file beside it (a
    relative location), small ones and shape data stay inline. Tensors of `model` that are
    external data already (in files under `base_dir`) are copied there in chunks, never read
    whole; with `move`, a single such file is moved instead (it leaves `base_dir`). `model` is
    left as it was."""
    from onnx import TensorProto, numpy_helper
    from .weights import ALIGN, copy_external, external_info
    path = Path(path)
    if data_name is None:
        if model.ByteSize() > PROTO_LIMIT:
            raise BadInput(f"{path.name}: the model is over 2 GiB; it needs external data")
        path.write_bytes(model.SerializeToString())
        return
    external = [t for t in _tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]
    files = {external_info(t).get("location") for t in external}
    moved = None
    (path.parent / data_name).parent.mkdir(parents=True, exist_ok=True)
    if move and base_dir is not None and len(files) == 1:
        moved = files.pop()
        _move(Path(base_dir) / moved, path.parent / data_name)
    swapped = []
    try:
        with open(path.parent / data_name, "ab" if moved else "wb") as fh:
            for t in _tensors(model.graph):
                if t.data_location == TensorProto.EXTERNAL:
                    if base_dir is None:
                        continue
                    swapped.append((t, None, TensorProto()))
                    swapped[-1][2].CopyFrom(t)
                    if moved:
                        next(e for e in t.external_data if e.key == "location").value = data_name
                    else:
                        copy_external(t, Path(base_dir), fh, data_name)
                    continue
                if not _goes_external(t):
                    continue
                raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                fh.write(b"\0" * (-fh.tell() % ALIGN))
                offset = fh.tell()
                fh.write(raw)
                swapped.append((t, raw, TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)))
                t.CopyFrom(swapped[-1][2])
                t.data_location = TensorProto.EXTERNAL
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
        path.write_bytes(model.SerializeToString())
    finally:
        for t, raw, before in swapped:
            t.CopyFrom(before)
            if raw is not None:
                t.raw_data = raw


def _move(src: Path, dst: Path) -> None:
    """Rename a file; across file systems, copy it and remove the source."""
    try:
        os.replace(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        src.unlink()
