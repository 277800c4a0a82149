"""Caffe's data pipeline: Datum encode/decode, LMDB read/write, the DataTransformer, and the
``convert_imageset`` / ``compute_image_mean`` tools as functions.

The data *layers* (Data, ImageData, MemoryData, DummyData, HDF5Data, HDF5Output) live in
``netspec.layers.data``, SegDataLayer in ``netspec.layers.seg_lmdb``; everything here is plain numpy and usable
on its own (e.g. in a ``Dataset``).
"""
from .datum import (array_to_datum, datum_to_array, decode_datum, decode_image, encode_image,  # noqa: F401
                    encoded_datum, image_to_datum, parse_datum, read_image, read_image_list,
                    read_image_to_datum)
from .lmdb_io import (LMDBReader, LMDBWriter, WrapCursor, check_lmdb, compute_image_mean,  # noqa: F401
                      convert_imageset, is_leveldb, leveldb_to_lmdb)
from .transform import FCN_MEAN, DataTransformer, read_mean_file  # noqa: F401
