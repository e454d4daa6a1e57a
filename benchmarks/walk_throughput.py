"""Throughput of the vectorised walks vs the sequential NumPy peer.

Workload (METHOD_SAMPLING / issue): depth n = 32, S = 2, AR(β = 1) target
with the combo error pattern, α = 2; every chain runs T lazy-chain steps
from the root (R1 read-out). Ours: `sampling.sample(..., 'js' | 'lifted')`,
all chains in one compiled program (the SJ walk as its jump chain with
geometric holding times, so T lazy steps cost about T/2 iterations). The
peer: `numpy_js_walk.py` (a plain NumPy walk over its own hashed Dirichlet
target with random multiplicative noise α = 2, exact leaves, chains one
after another), imported from --peer and run in this same process.

chain-steps/s = chains × T / seconds (lazy steps, both sides);
oracle calls/s counts raw μ̂ evaluations (S + 1 per internal move).

Prints one JSON line: device, js_steps_per_s, lifted_steps_per_s,
js_calls_per_s, numpy_peer_steps_per_s, speedup_vs_numpy (ours SJ at the
largest chain count / peer), and a `sweep` over chain counts.

CPU (about two minutes):
  python benchmarks/walk_throughput.py --peer PATH/TO/numpy_js_walk.py
GPU: add --chains 1000,65536,1048576
"""

import argparse
import importlib.util
import json
import platform
import time

import jax

import sampling


def bench(inst, method, chains, steps):
  key = jax.random.key(0)
  params = dict(steps=steps) if method == "lifted" else dict(
      steps=steps, leaf_loop=0.0)
  sampling.sample(inst, method, key, chains, **params)  # compile
  t0 = time.perf_counter()
  _, st = sampling.sample(inst, method, jax.random.key(1), chains, **params)
  dt = time.perf_counter() - t0
  return dict(chains=chains, seconds=round(dt, 3),
              steps_per_s=round(chains * steps / dt, 1),
              calls_per_s=round(float(st["oracle_calls"].sum()) / dt, 1),
              accepted=round(float(st["accepted"].mean()), 4))


def peer(path, n, steps, chains):
  spec = importlib.util.spec_from_file_location("numpy_js_walk", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  _, queries, wall, _ = mod.run(n, 2, 2.0, 1.0, steps, chains, 0, "numpy",
                                True)
  return dict(chains=chains, seconds=round(wall, 3),
              steps_per_s=round(chains * steps / wall, 1),
              calls_per_s=round(queries / wall, 1))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=32)
  p.add_argument("--steps", type=int, default=2048)
  p.add_argument("--chains", default="1000,65536")
  p.add_argument("--peer", default="", help="path of numpy_js_walk.py")
  p.add_argument("--peer_chains", type=int, default=20)
  args = p.parse_args()
  inst = sampling.make_instance(2, args.n, "ar", "combo", 2.0, beta=1.0)
  sweep = []
  for c in (int(x) for x in args.chains.split(",")):
    sweep.append(dict(js=bench(inst, "js", c, args.steps),
                      lifted=bench(inst, "lifted", c, args.steps)))
  last = sweep[-1]
  out = dict(device=jax.devices()[0].device_kind,
             backend=jax.default_backend(), jax=jax.__version__,
             python=platform.python_version(),
             js_steps_per_s=last["js"]["steps_per_s"],
             lifted_steps_per_s=last["lifted"]["steps_per_s"],
             js_calls_per_s=last["js"]["calls_per_s"],
             lifted_calls_per_s=last["lifted"]["calls_per_s"])
  if args.peer:
    pr = peer(args.peer, args.n, args.steps, args.peer_chains)
    out.update(numpy_peer_steps_per_s=pr["steps_per_s"],
               numpy_peer_calls_per_s=pr["calls_per_s"],
               speedup_vs_numpy=round(last["js"]["steps_per_s"]
                                      / pr["steps_per_s"], 1))
  else:
    out.update(numpy_peer_steps_per_s=None, speedup_vs_numpy=None)
  out.update(workload=dict(n=args.n, S=2, target="ar(beta=1)",
                           pattern="combo", alpha=2.0, steps=args.steps),
             sweep=sweep)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
