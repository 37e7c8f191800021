"""Rebuild the vendored files of the web page (not imported by facephi; run by hand, see README.md).

    npm pack @mediapipe/tasks-vision@1.1.0 && tar xzf mediapipe-tasks-vision-1.1.0.tgz
    .venv/bin/python src/facephi/serve/static/vendor/build_vendor.py package/

1. Copies the MediaPipe Tasks web runtime out of the npm package (``vision_bundle.mjs``, the SIMD
   WASM build and its loader) with the package's usage telemetry switched off: the bundle posts
   usage statistics to ``odml.pa.googleapis.com`` every minute; the patch drops them unsent.
2. Assembles ``face_landmarker.task`` (what the Tasks ``FaceLandmarker`` loads) from the legacy
   FaceMesh models inside the ``mediapipe`` Python wheel, so that the browser finds the very
   landmarks ``facephi`` finds in Python (``FaceMesh(refine_landmarks=True)``):

   * ``face_detector.tflite``: ``face_detection_short_range.tflite`` + image metadata (RGB, [-1, 1]);
   * ``face_landmarks_detector.tflite``: ``face_landmark_with_attention.tflite`` + image metadata
     (RGB, [0, 1]), with its 7 outputs (mesh, lips, eyes, irises, face flag) folded into the 2 the
     Tasks graph reads (478 x 3 values, face flag) by 6 appended TFLite ops (GATHER, MEAN,
     CONCATENATION) that do what MediaPipe's ``LandmarksRefinementCalculator`` does in the legacy
     graph: lips and eye contours replace the mesh's x, y; the iris points are appended with the
     mean z of their eye's contour.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np

HERE = Path(__file__).resolve().parent
NPM_FILES = {"vision_bundle.mjs": "vision_bundle.mjs",
             "wasm/vision_wasm_internal.js": "vision_wasm_internal.js",
             "wasm/vision_wasm_internal.wasm": "vision_wasm_internal.wasm"}
TELEMETRY_PATCHES = [
    ('flush(t,e){if(this.error)', 'flush(t,e){if(this.i=[],1)t?.();else if(this.error)'),  # drop, never send
    ('"https://odml.pa.googleapis.com/v1/log"', '""'),
]

# MediaPipe's refinement index maps (mediapipe/tasks/cc/vision/face_landmarker/tensors_to_face_landmarks_graph.cc)
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
        76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
        62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407]
LEFT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
            130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
            226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
            35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
            156, 70, 63, 105, 66, 107, 55, 193]
RIGHT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
             359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
             446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
             265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
             383, 300, 293, 334, 296, 336, 285, 417]
LEFT_IRIS, RIGHT_IRIS = list(range(468, 473)), list(range(473, 478))
LEFT_CONTOUR, RIGHT_CONTOUR = LEFT_EYE[:16], RIGHT_EYE[:16]  # averaged for the iris z


def copy_runtime(package: Path) -> None:
    for source, target in NPM_FILES.items():
        shutil.copyfile(package / source, HERE / target)
    bundle = HERE / "vision_bundle.mjs"
    text = bundle.read_text(encoding="utf-8")
    for old, new in TELEMETRY_PATCHES:
        if text.count(old) != 1:
            raise SystemExit(f"telemetry patch does not apply (another tasks-vision version?): {old}")
        text = text.replace(old, new)
    bundle.write_text(text, encoding="utf-8")


def _gather_indices() -> np.ndarray:
    """For each of the 478 x 3 outputs, its index into concat(mesh 1404, lips 160, left eye 142,
    right eye 142, left iris 10, right iris 10, left iris z, right iris z); later maps win."""
    src = np.full((478, 3), -1, np.int64)
    src[:468] = np.arange(1404).reshape(468, 3)
    offset = 1404
    for mapping in (LIPS, LEFT_EYE, RIGHT_EYE, LEFT_IRIS, RIGHT_IRIS):
        for k, index in enumerate(mapping):
            src[index, 0], src[index, 1] = offset + 2 * k, offset + 2 * k + 1
        offset += 2 * len(mapping)
    src[LEFT_IRIS, 2], src[RIGHT_IRIS, 2] = offset, offset + 1
    assert (src >= 0).all() and offset == 1868
    return src.reshape(-1).astype(np.int32)


def landmark_model_478(path: Path) -> bytearray:
    from mediapipe.tasks.metadata import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(path.read_bytes(), 0))
    model.metadata, model.metadataBuffer = None, None  # written anew below
    graph = model.subgraphs[0]
    outputs = [int(i) for i in graph.outputs]
    if len(outputs) != 7:
        raise SystemExit(f"{path}: expected the 7 outputs of the attention mesh, got {len(outputs)}")
    mesh, face_flag = outputs[0], outputs[6]

    def opcode(code: int) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = s.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = code
        oc.version = 1
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def tensor(name: str, shape: list[int], dtype: int = s.TensorType.FLOAT32, data: np.ndarray | None = None) -> int:
        buffer = s.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        model.buffers.append(buffer)
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), dtype, len(model.buffers) - 1
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    def op(code: int, inputs: list[int], outs: list[int], options_type: int, options: object) -> None:
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = opcode(code), np.array(inputs, np.int32), np.array(outs, np.int32)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        graph.operators.append(o)

    def gather(name: str, source: int, indices: np.ndarray | list[int]) -> int:
        index = tensor(name + "_index", [len(indices)], s.TensorType.INT32, np.asarray(indices, np.int32))
        out = tensor(name, [1, 1, 1, len(indices)])
        options = s.GatherOptionsT()
        options.axis, options.batchDims = 3, 0
        op(s.BuiltinOperator.GATHER, [source, index], [out], s.BuiltinOptions.GatherOptions, options)
        return out

    def mean(name: str, source: int) -> int:
        axis = tensor(name + "_axis", [1], s.TensorType.INT32, np.array([3], np.int32))
        out = tensor(name, [1, 1, 1, 1])
        options = s.ReducerOptionsT()
        options.keepDims = True
        op(s.BuiltinOperator.MEAN, [source, axis], [out], s.BuiltinOptions.ReducerOptions, options)
        return out

    left_z = mean("left_iris_z", gather("left_contour_z", mesh, [3 * i + 2 for i in LEFT_CONTOUR]))
    right_z = mean("right_iris_z", gather("right_contour_z", mesh, [3 * i + 2 for i in RIGHT_CONTOUR]))
    joined = tensor("all_landmark_values", [1, 1, 1, 1870])
    options = s.ConcatenationOptionsT()
    options.axis, options.fusedActivationFunction = 3, 0
    op(s.BuiltinOperator.CONCATENATION, outputs[:6] + [left_z, right_z], [joined],
       s.BuiltinOptions.ConcatenationOptions, options)
    landmarks = gather("landmarks_478", joined, _gather_indices())
    graph.outputs = np.array([landmarks, face_flag], np.int32)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytearray(builder.Output())


def _with_metadata(model: bytearray, name: str, mean: float, std: float) -> bytes:
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(model).add_general_info(name)
    writer.add_image_input([mean], [std]).add_feature_output().add_feature_output()
    return bytes(writer.populate()[0])


def build_face_landmarker_task(out: Path) -> None:
    import mediapipe as mp
    from mediapipe.tasks.python.metadata.metadata_writers.model_asset_bundle_utils import AlignZipFile

    modules = Path(mp.__path__[0]) / "modules"
    detector = bytearray((modules / "face_detection" / "face_detection_short_range.tflite").read_bytes())
    files = {
        "face_detector.tflite": _with_metadata(detector, "face_detector", 127.5, 127.5),
        "face_landmarks_detector.tflite": _with_metadata(
            landmark_model_478(modules / "face_landmark" / "face_landmark_with_attention.tflite"),
            "face_landmarks_detector", 0.0, 255.0),
    }
    with AlignZipFile(out, mode="w", alignment=4) as bundle:  # stored, 4-byte aligned, fixed dates
        for name, data in files.items():
            bundle.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        copy_runtime(Path(sys.argv[1]))
    build_face_landmarker_task(HERE / "face_landmarker.task")
    for path in sorted(HERE.iterdir()):
        print(f"{path.stat().st_size:>12,}  {path.name}")
