"""CONTRACT-TEST STAND-IN for NVIDIA TensorRT. This is not TensorRT and proves nothing about
TensorRT itself: it implements only the subset of the TensorRT 10.x/11.x Python API that
stable_audio_rt calls, with the documented names and signatures, so that our calls are
exercised for real on a machine where TensorRT cannot be installed.

Put tests/fakes on sys.path (first) to import it as `tensorrt`.
"""

import enum

__version__ = "0.0.0+contract-stand-in"
CONTRACT_STAND_IN = True


class DataType(enum.Enum):
    # https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/FoundationalTypes/DataType.html
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    BF16 = 7
    INT64 = 8


float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int32 = DataType.INT32
int64 = DataType.INT64
