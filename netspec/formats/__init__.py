"""Files on disk: prototxt text, protobuf binaries (caffemodel, solverstate, BlobProto), the V0/V1 upgrade, fork
dialects and the one atomic writer. Everything here is torch-free."""
