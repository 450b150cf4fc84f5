"""Reads a tinymim relation store with zarr-python 3 and prints what it holds as JSON.

Used by formats/tests/zarr_python.rs to check that a store written by zarrs is an ordinary
Zarr v3 hierarchy: only rows below each segment's `committed_rows` watermark and image-table
entries below `committed_images` are read. Targets are printed as their bit patterns (float16,
or int8 as bytes); an 8-bit store's scales too, and the values they stand for
(value · scale[row, channel]) as float32.

Usage: python read_store.py STORE     (a folder, or s3://BUCKET/PREFIX read through s3fs with
                                      the endpoint and credentials of the AWS_* variables)
"""

import json
import os
import sys

import numpy as np
import zarr


def hexes(rows):
    return [bytes(row.tolist()).hex() for row in rows]


def main(path):
    options = None
    if path.startswith("s3://"):
        options = {"anon": False}
        if "AWS_ENDPOINT_URL" in os.environ:
            options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    root = zarr.open_group(path, mode="r", storage_options=options)
    record = root.attrs["tinymim"]
    out = {"tinymim": record, "segments": []}
    if "teacher" in root:
        teacher = root["teacher"]
        out["qkv_weight"] = teacher["qkv_weight"][:].ravel().tolist()
        out["qkv_bias"] = teacher["qkv_bias"][:].tolist()
    segments = root["segments"]
    for segment_id in sorted(segments.group_keys()):
        segment = segments[segment_id]
        state = segment.attrs["tinymim_segment"]
        rows, images = state["committed_rows"], state["committed_images"]
        targets = segment[record["encoding"]][:rows]
        table = segment["images"]
        entry = {}
        if targets.dtype == np.int8:
            scale = segment["scale"][:rows]
            entry["scale_bits"] = scale.view(np.uint16).ravel().tolist()
            decoded = targets.astype(np.float32) * scale.astype(np.float32)[:, None, :]
            entry["decoded"] = decoded.ravel().tolist()
            bits = targets.view(np.uint8)
        else:
            bits = targets.view(np.uint16)
        out["segments"].append(
            entry
            | {
                "id": segment_id,
                "committed_rows": rows,
                "closed": state["closed"],
                "key": hexes(segment["key"][:rows]),
                "image": hexes(segment["image"][:rows]),
                "view": segment["view"][:rows].tolist(),
                "targets_dtype": str(targets.dtype),
                "targets_shape": list(targets.shape),
                "targets_bits": bits.ravel().tolist(),
                "images": {
                    "hash": hexes(table["hash"][:images]),
                    "path": [str(p) for p in table["path"][:images]],
                    "size": table["size"][:images].tolist(),
                    "label": [str(label) for label in table["label"][:images]],
                    "modified": table["modified"][:images].tolist(),
                },
            }
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
