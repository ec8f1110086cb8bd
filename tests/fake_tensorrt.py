"""A fake ``tensorrt`` module for the CPU tests of the engine build (TensorRT cannot run without a GPU).

It models the documented behaviour that TensorRT reports by return value rather than by
exception: ``create_timing_cache`` returns None for bytes it cannot parse, ``set_timing_cache``
returns False for a cache of another device (ignore_mismatch False), ``get_timing_cache`` may
return None, ``build_serialized_network`` returns None on failure. Timing caches are tagged
with the device they were made on; every build records the builder flags it ran with.
"""
import types

TIMING_MAGIC = b"fake timing cache for "


class FakeTimingCache:
    def __init__(self, device):
        self.device = device

    def serialize(self):
        return TIMING_MAGIC + self.device.encode()


class FakeConfig:
    def __init__(self, trt):
        self.trt = trt
        self.flags = {"TF32"}  # TensorRT's default: TF32 allowed
        self.timing_cache = None

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profile = profile

    def create_timing_cache(self, data):
        if self.trt.no_timing_cache:
            return None
        if not data:
            return FakeTimingCache(self.trt.device)
        return FakeTimingCache(data[len(TIMING_MAGIC):].decode()) if data.startswith(TIMING_MAGIC) else None

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.device != self.trt.device and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return None if self.trt.loses_timing_cache else self.timing_cache


class FakeBuilder:
    def __init__(self, trt):
        self.trt = trt

    def create_network(self, flags):
        return object()

    def create_builder_config(self):
        return FakeConfig(self.trt)

    def create_optimization_profile(self):
        return types.SimpleNamespace(set_shape=lambda *args: None)

    def build_serialized_network(self, network, config):
        self.trt.built_with.append(set(config.flags))
        return None if self.trt.build_fails else b"serialized engine"


class FakeLogger:
    WARNING = 2

    def __init__(self, level):
        self.level = level


def fake_tensorrt(version="10.9.0.34", fp16_flag=True, device="NVIDIA H100 80GB HBM3", **behaviour):
    trt = types.SimpleNamespace(__version__=version, device=device, built_with=[], no_timing_cache=False,
                                loses_timing_cache=False, build_fails=False)
    vars(trt).update(behaviour)
    flags = {"TF32": "TF32", **({"FP16": "FP16"} if fp16_flag else {})}
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.Logger = FakeLogger
    trt.Builder = lambda logger: FakeBuilder(trt)
    trt.OnnxParser = lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True, num_errors=0)
    return trt
