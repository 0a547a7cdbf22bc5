"""Device check for the TensorRT backend's KV pool (needs an NVIDIA GPU and cuda-python,
not TensorRT): allocation, the swap on commit, and rollback's re-pitch, compared with
numpy. Run: python benchmarks/cuda_kv_pool_check.py  (prints OK or raises)."""

import numpy as np

from runtime import contract as C
from runtime.backends.tensorrt import DeviceKVPool
from runtime.cuda import check, cudart, device_properties
from runtime.kv import BASE, MODULE


def upload(rt, ptr, array):
    check(rt.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "upload")


def download(rt, tensor):
    out = np.empty(tensor.shape, dtype=np.float16 if tensor.dtype == "float16" else np.float32)
    check(rt.cudaMemcpy(out.ctypes.data, tensor.ptr, out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "download")
    return out


def main() -> None:
    rt = cudart()
    print("device:", device_properties(0))
    dims = C.Dims(n_layers=2, recycle_layers=1, n_kv_heads=3, head_dim=8, dim=24, vocab_size=10, dtype="float16")
    pool = DeviceKVPool(dims, batch=2, capacity=16)
    rng = np.random.default_rng(0)
    expected = {name: np.zeros((2, 3, 0, 8), np.float16) for name in pool.current}
    for step, new in enumerate((5, 2, 2)):
        for cache in (BASE, MODULE):
            # What an engine would do: write present = concat(past, new) into the output buffers.
            for present_name, ptr in pool.output_buffers(cache).items():
                past_name = present_name.replace("present", "past_key_values")
                present = np.concatenate([expected[past_name], rng.standard_normal((2, 3, new, 8)).astype(np.float16)], 2)
                upload(rt, ptr, np.ascontiguousarray(present))
                expected[past_name] = present
            pool.commit(cache, {}, new)
            for name, tensor in pool.feeds(cache).items():
                assert tensor.shape == expected[name].shape, (name, tensor.shape)
                assert np.array_equal(download(rt, tensor), expected[name]), f"step {step}: {name} differs after commit"
    pool.rollback(BASE, 3)
    for name, tensor in pool.feeds(BASE).items():
        assert np.array_equal(download(rt, tensor), expected[name][:, :, :-3]), f"{name} differs after rollback"
    for name, tensor in pool.feeds(MODULE).items():
        assert np.array_equal(download(rt, tensor), expected[name]), "rollback of the base touched the module cache"
    pool.close()
    print("OK: DeviceKVPool commit (swap) and rollback (re-pitch) match numpy")


if __name__ == "__main__":
    main()
