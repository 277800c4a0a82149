"""Reading and writing Caffe's text format (``.prototxt``) with protobuf's own text_format.

Parsing follows Caffe's ``ReadProtoFromTextFile`` (``TextFormat::Parse``): a non-repeated field
given twice is an error, and so is a missing ``required`` field.  Every failure raises
:class:`netspec.errors.PrototxtError` worded ``file:line:col: what is wrong`` (``<string>`` when
the text came from no file), with a hint for the common cases: a field from a Caffe fork, a
solver file handed to the net parser and the reverse.

The schema is whatever :func:`netspec.proto.pb2` returns at call time, so nets parse against a
fork's schema after :func:`netspec.proto.load_proto`.

Semantic checks elsewhere (net building) report ``file:line: layer 'x' (Type)``; they get the
line of each layer from :func:`layer_lines` / :func:`parse_net_with_lines`.
"""

import difflib
import os
import pathlib
import re
import stat

from google.protobuf import text_format

from netspec import proto
from netspec.formats.atomic import atomic_write
from netspec.errors import PrototxtError

__all__ = [
    "parse_text", "parse_net", "parse_solver", "parse_net_with_lines", "read_net", "read_solver",
    "to_text", "write_text", "layer_lines",
]

_STRING_NAME = "<string>"
_FORK_HINT = (
    "this field is in neither BVLC Caffe's schema nor the forks netspec reads (docs/caffe_forks.md); if "
    "your prototxt comes from another Caffe fork, load that fork's caffe.proto with "
    "netspec.proto.load_proto('path/to/caffe.proto') / the --proto option"
)
_SOLVER_HINT = (
    "this looks like a solver prototxt; pass it to the solver (tools/train.py --solver) instead"
)
_NET_HINT = (
    "this looks like a net prototxt, not a solver; reference it from the solver with "
    "`net: \"path/to/net.prototxt\"` and pass the solver file to tools/train.py --solver"
)
# "1:9 : Message type "caffe.X" has no field named "y"." -> the location prefix and the reason.
_LOCATION_PREFIX = re.compile(r"^\s*\d+:\d+\s*:\s*")
_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
# text_format quotes the offending line before some reasons: "'<line>': reason".
_ECHOED_LINE = re.compile(r"^'(.*?)': ", re.S)
_ECHO_LIMIT = 60


# --------------------------------------------------------------------------------------------
# Parsing


def parse_text(text, message, path=None):
    """Parse text-format ``text`` into ``message`` (an instance, or a message class) and return it.

    ``path`` only names the source in error messages.  ``text`` may be ``str`` or UTF-8 ``bytes``.
    """
    if isinstance(message, type):
        message = message()
    where = os.fspath(path) if path is not None else _STRING_NAME
    text = _as_str(text, where)
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise PrototxtError(_describe_parse_error(err, message, where)) from err
    except RecursionError as err:
        raise PrototxtError(f"{where}: messages are nested too deeply to parse") from err
    except Exception as err:  # text_format's internals: report them in our form, never leak
        raise PrototxtError(f"{where}: cannot parse: {err}") from err
    missing = message.FindInitializationErrors()
    if missing:
        raise PrototxtError(_describe_missing(missing, text, where))
    return message


def parse_net(path_or_text, *, path=None):
    """Parse a net definition into ``caffe_pb2.NetParameter``.

    ``path_or_text`` is a path (``os.PathLike``, or a one-line ``str`` naming an existing file or
    ending in ``.prototxt``) or the text itself; ``path`` names text in error messages.
    """
    text, where = _source(path_or_text, path)
    return parse_text(text, proto.pb2().NetParameter(), where)


def parse_solver(path_or_text, *, path=None):
    """Parse a solver definition into ``caffe_pb2.SolverParameter`` (arguments as :func:`parse_net`)."""
    text, where = _source(path_or_text, path)
    return parse_text(text, proto.pb2().SolverParameter(), where)


def parse_net_with_lines(path_or_text, *, path=None):
    """Parse a net and return ``(NetParameter, lines)``, ``lines`` as from :func:`layer_lines`."""
    text, where = _source(path_or_text, path)
    net = parse_text(text, proto.pb2().NetParameter(), where)
    return net, layer_lines(text)


def read_net(path):
    """Parse the net file at ``path``."""
    return parse_net(pathlib.Path(path))


def read_solver(path):
    """Parse the solver file at ``path``."""
    return parse_solver(pathlib.Path(path))


# --------------------------------------------------------------------------------------------
# Writing


def to_text(message):
    """Return ``message`` in text format (Caffe's layout: two-space indent, one field a line).

    Floats print in their shortest form that reads back to the same float32, so
    ``parse(to_text(m)) == m``.
    """
    return text_format.MessageToString(message, as_utf8=True)


def write_text(message, path):
    """Write ``message`` in text format to ``path`` atomically.

    The text goes to a temporary file beside ``path``, which is flushed, fsynced and then renamed
    over ``path``: readers see the old file or the complete new one, never a partial write.
    """
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(to_text(message))


# --------------------------------------------------------------------------------------------
# Layer line pre-scan


def layer_lines(text):
    """Return the 1-based line of each top-level ``layer``/``layers`` block, in file order.

    A cheap scan that skips ``#`` comments and quoted strings and tracks ``{``/``<`` nesting; it
    does not validate.  For a valid net, entry ``i`` is the line of ``net.layer[i]`` (or of
    ``net.layers[i]`` in a V1 net; Caffe rejects nets that mix both).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = []
    depth = 0
    line = 1
    pending = None  # line of a top-level `layer`/`layers` name awaiting its `{`
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch in "\"'":
            i = _skip_string(text, i)
            pending = None
        elif ch in "{<":
            if depth == 0 and pending is not None:
                lines.append(pending)
            pending = None
            depth += 1
            i += 1
        elif ch in "}>":
            depth = max(depth - 1, 0)
            pending = None
            i += 1
        elif ch == "_" or ch.isalpha():
            j = i + 1
            while j < n and (text[j] == "_" or text[j].isalnum()):
                j += 1
            word = text[i:j]
            pending = line if depth == 0 and word in ("layer", "layers") else None
            i = j
        elif ch in ": \t\r\f\v,;":
            i += 1  # a `:` may sit between a field name and its `{`
        else:
            pending = None
            i += 1
    return lines


def _skip_string(text, start):
    """Index just past the quoted string that starts at ``start`` (or the end of its line)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
        elif ch == quote or ch == "\n":  # an unterminated string ends at the line end
            return i + 1 if ch == quote else i
        else:
            i += 1
    return i


# --------------------------------------------------------------------------------------------
# Helpers


def _looks_like_file(source):
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str) or "\n" in source:
        return False
    if os.path.isfile(source):  # an existing file, even one whose name holds a "{"
        return True
    return "{" not in source and source.endswith((".prototxt", ".pbtxt"))


#: The largest text prototxt read (a net or solver file; Caffe's own limit for text protos is INT_MAX bytes,
#: but the largest public ones are a few MB). Settable with NETSPEC_MAX_PROTOTXT_MB.
MAX_TEXT_BYTES = int(float(os.environ.get("NETSPEC_MAX_PROTOTXT_MB", "256")) * 2 ** 20)


def read_text_file(file_path: str, limit: int = None) -> bytes:
    """The bytes of a text proto file, refused before reading when it is not a regular file (a FIFO would
    block for ever, /dev/zero never ends) or larger than ``limit`` (default MAX_TEXT_BYTES)."""
    limit = MAX_TEXT_BYTES if limit is None else limit
    try:
        st = os.stat(file_path)
    except OSError as err:
        raise PrototxtError(f"{file_path}: cannot read: {err.strerror or err}") from err
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise PrototxtError(f"{file_path}: is {kind}; give the path of a .prototxt file")
    if st.st_size > limit:
        raise PrototxtError(f"{file_path}: {st.st_size} bytes, more than the {limit >> 20} MiB a net or solver "
                            "prototxt may have (a binary file? binary nets are .caffemodel / .binaryproto; "
                            "raise the limit with NETSPEC_MAX_PROTOTXT_MB)")
    try:
        with open(file_path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise PrototxtError(f"{file_path}: cannot read: {err.strerror or err}") from err


def _source(path_or_text, path):
    """Return ``(text, where)`` for a path or text argument."""
    if _looks_like_file(path_or_text):
        file_path = os.fspath(path_or_text)
        data = read_text_file(file_path)
        where = os.fspath(path) if path is not None else file_path
        return _as_str(data, where), where
    where = os.fspath(path) if path is not None else _STRING_NAME
    return _as_str(path_or_text, where), where


def _as_str(text, where):
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        if bytes(text[:3]) == b"\xef\xbb\xbf":  # a UTF-8 byte order mark (Windows editors): not part of the text
            text = text[3:]
        if b"\x00" in text:
            line = text.count(b"\n", 0, text.index(b"\x00")) + 1
            raise PrototxtError(f"{where}:{line}: the file contains NUL bytes: it is a binary file, not a text "
                                "prototxt (binary nets are read from .caffemodel / .binaryproto files)")
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            line = text.count(b"\n", 0, err.start) + 1
            col = err.start - (bytes(text).rfind(b"\n", 0, err.start) + 1) + 1
            raise PrototxtError(f"{where}:{line}:{col}: the file is not valid UTF-8") from err
    raise TypeError(f"expected prototxt text as str or bytes, got {type(text).__name__}")


def _describe_parse_error(err, message, where):
    line, col = err.GetLine(), err.GetColumn()
    location = f"{where}:{line}:{col}" if line is not None else where
    reason = _LOCATION_PREFIX.sub("", str(err)).strip() or "cannot parse"
    echoed = _ECHOED_LINE.match(reason)
    if echoed and len(echoed.group(1)) > _ECHO_LIMIT:
        reason = f"'{echoed.group(1)[:_ECHO_LIMIT]}...': {reason[echoed.end():]}"
    unknown = _NO_FIELD.search(reason)
    if not unknown:
        return f"{location}: {reason}"
    type_name, field = unknown.groups()
    text = f"{location}: no field named '{field}' in {type_name}"
    hint = _kind_hint(message, type_name, field) or _unclosed_hint(message, type_name, field)
    if hint is None:
        hint = _FORK_HINT
        close = _close_field(message, type_name, field)
        if close:
            hint = f"did you mean '{close}'? otherwise {hint}"
    return f"{text}; {hint}"


def _kind_hint(message, type_name, field):
    """The solver-vs-net hint when a top-level field belongs to the other kind of file."""
    pb2 = proto.pb2()
    net_desc, solver_desc = pb2.NetParameter.DESCRIPTOR, pb2.SolverParameter.DESCRIPTOR
    top = message.DESCRIPTOR.full_name
    if type_name != top:
        return None
    if top == net_desc.full_name and field in solver_desc.fields_by_name:
        return _SOLVER_HINT
    if top == solver_desc.full_name and field in net_desc.fields_by_name:
        return _NET_HINT
    return None


def _unclosed_hint(message, type_name, field):
    """A field of an enclosing message (the layer, the net, the solver) met inside a nested block: that block
    was not closed."""
    pb2 = proto.pb2()
    outers = [message.DESCRIPTOR, pb2.LayerParameter.DESCRIPTOR, pb2.V1LayerParameter.DESCRIPTOR]
    for outer in outers:
        if type_name != outer.full_name and field in outer.fields_by_name \
                and _find_descriptor(outer, type_name) is not None:
            block = type_name.rsplit(".", 1)[-1]
            return (f"'{field}' is a field of {outer.name}, not of {block}: a '}}' is probably missing (the "
                    f"{block} block is not closed before this line)")
    return None


def _close_field(message, type_name, field):
    desc = _find_descriptor(message.DESCRIPTOR, type_name)
    if desc is None:
        return None
    matches = difflib.get_close_matches(field, list(desc.fields_by_name), n=1, cutoff=0.8)
    return matches[0] if matches else None


def _find_descriptor(root, full_name):
    """The message descriptor named ``full_name`` reachable from ``root`` (None if not found)."""
    seen, stack = set(), [root]
    while stack:
        desc = stack.pop()
        if desc.full_name == full_name:
            return desc
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        stack.extend(f.message_type for f in desc.fields if f.message_type is not None)
    return None


def _describe_missing(missing, text, where):
    """Report missing required fields, at the line of the layer they sit in when known."""
    first = missing[0]
    location = where
    found = re.match(r"layers?\[(\d+)\]", first)
    if found:
        lines = layer_lines(text)
        index = int(found.group(1))
        if index < len(lines):
            location = f"{where}:{lines[index]}"
    names = ", ".join(missing)
    return f"{location}: required field(s) missing: {names}"
