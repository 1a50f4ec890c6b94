"""Replays a request trace through the seed's own ModelPool (../shared/reference/
seed_reference.py) on device "cpu", as the seed wrote it: max_gpu_models
models resident, LRU eviction, torch.jit.load on every miss.

    /usr/bin/python3 seed_pool_driver.py REFERENCE_DIR TRACE_JSON

TRACE_JSON: {"paths": [model files], "trace": [model index per request],
"capacity": 12}. Prints one JSON object: total_s, loads, hits, latencies_ms.
"""
import json
import sys
import time

import torch


def main():
    ref_dir, trace_file = sys.argv[1], sys.argv[2]
    sys.path.insert(0, ref_dir)
    from seed_reference import ModelPool  # noqa: E402

    spec = json.load(open(trace_file))
    paths, trace, capacity = spec["paths"], spec["trace"], spec["capacity"]
    loads = [0]

    def load_fn(model_id):
        loads[0] += 1
        return torch.jit.load(paths[int(model_id)])

    pool = ModelPool(max_gpu_models=capacity, load_fn=load_fn, device="cpu")
    ids = torch.tensor([[1, 2, 3, 4]], dtype=torch.int64)
    dense = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 1]], dtype=torch.float32)
    latencies = []
    start = time.perf_counter()
    for m in trace:
        t0 = time.perf_counter()
        model = pool.get_model(str(m))
        with torch.no_grad():
            model(ids, dense)
        latencies.append((time.perf_counter() - t0) * 1000.0)
    total = time.perf_counter() - start
    print(json.dumps({"total_s": total, "loads": loads[0], "hits": len(trace) - loads[0],
                      "latencies_ms": latencies}))


if __name__ == "__main__":
    main()
