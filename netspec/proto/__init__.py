"""The Caffe schema: the bundled ``caffe_pb2`` and run-time loading of a fork's ``caffe.proto``.

``netspec/proto/caffe.proto`` is BVLC Caffe's schema plus a few documented fork fields
(``docs/schema_extensions.md``); ``caffe_pb2.py`` is generated from it and committed, so
installing netspec needs neither protoc nor network.  Regenerate with ``tools/gen_proto.py``.

Nets from Caffe forks (SSD, DeepLab, ...) may use fields BVLC's schema lacks.  For them,
``load_proto('path/to/their/caffe.proto')`` compiles that file at run time and makes it the
schema netspec parses and writes with.  Code that must follow such a swap reads the schema
through :func:`pb2` (or the attribute ``netspec.proto.caffe_pb2`` at call time) rather than
binding ``caffe_pb2`` once at import.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types

from netspec.errors import NetspecError

from . import caffe_pb2 as _bundled

__all__ = ["caffe_pb2", "pb2", "load_proto", "reset_proto", "ProtoLoadError"]

#: The schema module in use (the bundled one until :func:`load_proto` is called).
caffe_pb2 = _bundled


class ProtoLoadError(NetspecError, RuntimeError):
    """A user-supplied ``caffe.proto`` could not be compiled or loaded."""


def pb2():
    """Return the schema module in use: bundled ``caffe_pb2`` or the one from :func:`load_proto`."""
    return caffe_pb2


def reset_proto():
    """Go back to the bundled schema."""
    global caffe_pb2
    caffe_pb2 = _bundled
    return caffe_pb2


def load_proto(proto_path):
    """Compile a (fork's) ``caffe.proto`` and make it the schema netspec uses.

    Needs ``grpcio-tools`` (``pip install grpcio-tools``), which ships its own protoc; no system
    protoc is used.  The file must declare ``package caffe`` so the message names
    (``caffe.NetParameter`` ...) stay the same.  Its messages live in a private descriptor pool,
    so they never clash with the bundled schema; call :func:`reset_proto` to switch back.

    Returns the new module, which offers the same names as a protoc-generated ``caffe_pb2``
    (message classes, top-level enums and their values, ``DESCRIPTOR``).
    Raises :class:`ProtoLoadError` when grpcio-tools is missing or protoc rejects the file.
    """
    global caffe_pb2
    caffe_pb2 = compile_proto(proto_path)
    return caffe_pb2


def compile_proto(proto_path):
    """Compile ``proto_path`` and return it as a module, without making it the active schema."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto_path = os.path.abspath(os.fspath(proto_path))
    if not os.path.isfile(proto_path):
        raise ProtoLoadError(f"{proto_path}: no such file")
    if importlib.util.find_spec("grpc_tools") is None:
        raise ProtoLoadError(
            f"{proto_path}: loading a caffe.proto at run time needs the protobuf compiler from "
            "grpcio-tools; install it with `pip install grpcio-tools`"
        )
    import grpc_tools

    include_dir = os.path.dirname(proto_path)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    workdir = tempfile.mkdtemp(prefix="netspec-proto-")
    try:
        descriptor_set = os.path.join(workdir, "schema.pb")
        # protoc runs in a child process: its messages go to our stderr capture, and a crash
        # in it cannot take the caller down.
        result = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{include_dir}", f"-I{well_known}",
             "--include_imports", f"--descriptor_set_out={descriptor_set}", proto_path],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise ProtoLoadError(f"{proto_path}: protoc could not compile it:\n{detail}")
        with open(descriptor_set, "rb") as handle:
            files = descriptor_pb2.FileDescriptorSet.FromString(handle.read())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)
    main_name = os.path.basename(proto_path)
    file_desc = pool.FindFileByName(main_name)
    if file_desc.package != "caffe":
        raise ProtoLoadError(
            f"{proto_path}: declares package '{file_desc.package}', expected 'caffe'"
        )
    return _module_from_file(file_desc, message_factory, proto_path)


def _module_from_file(file_desc, message_factory, origin):
    """Build a module shaped like protoc's ``*_pb2`` output from a file descriptor."""
    from google.protobuf.internal import enum_type_wrapper

    module = types.ModuleType("caffe_pb2", f"caffe_pb2 compiled at run time from {origin}")
    module.__file__ = origin
    module.DESCRIPTOR = file_desc
    for name, desc in file_desc.message_types_by_name.items():
        setattr(module, name, message_factory.GetMessageClass(desc))
    for name, desc in file_desc.enum_types_by_name.items():
        setattr(module, name, enum_type_wrapper.EnumTypeWrapper(desc))
        for value in desc.values:
            setattr(module, value.name, value.number)
    return module
