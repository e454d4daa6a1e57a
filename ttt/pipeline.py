"""The main job: TTT -> augmented inference -> selection -> evaluation.

`run(config, workdir)` adapts a base model to every task of an ARC split (or
a Kaggle JSON file), predicts each test input under several views, selects
two attempts and scores them, leaving in `workdir`:

* `submission.json` (ARC Prize format), `results.json` (per task: correct?,
  attempts, candidates with counts and views, TTT losses, skip reasons),
  `metrics.jsonl` (one record per chunk, then the summary), `config.json`,
  `fingerprint.json`, `report.md` with PNG renderings under `renderings/`;
* `chunks/NNNNN.json`: each finished chunk of tasks, written atomically. A
  killed run started again with the same workdir skips the chunks already
  there, so it resumes where it stopped (`ttt.workdir`).

The run is built from stages, each a factory called once that captures its
config group and the plan's shapes and returns a NamedTuple of functions;
per-chunk calls take data only, and `job` goes no deeper than `run`:

    job      = ttt.job.parse(config)           # typed groups, registries
    plan     = ttt.plan.plan_run(tasks, ...)   # queries, chunks, capacities
    weights  = ttt.weights.load(...)           # Weights + its ModelConfig
    stages   = make_stages(job, plan, weights, mesh)   # adapt, decode, select
    for each chunk not yet in the workdir:
      records, timings, counts = run_chunk(stages, plan, chunk)

Chunks are padded to the plan's capacities with validity masks, so every
program compiles once per run (with `run.fixed_shapes`; else once per
length bucket and task slot count: a memory budget may size chunks per
length bucket, `ttt.plan.fit_memory`, each chunk running on the stages
of its own capacities, `Plan.at`). An empty `init_from` runs an
UNTRAINED model, said loudly in the log and the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from absl import logging

from ttt import adapt, decoders, evaluate, metrics, select, sharding
from ttt import codec as codec_lib
from ttt import job as job_lib
from ttt import plan as plan_lib
from ttt import weights as weights_lib
from ttt import workdir as workdir_lib


class Stages(NamedTuple):
  """The run's stages, each built once (see the module docstring)."""

  adapt: adapt.Adapt
  decoder: decoders.Decoder
  selection: select.Selection

  def programs(self) -> dict[str, Callable]:
    """{stage.program: jitted program} of every stage (compile guards)."""
    return {f"{stage}.{name}": p
            for stage, progs in (("adapt", self.adapt.programs),
                                 ("decode", self.decoder.programs),
                                 ("select", self.selection.programs))
            for name, p in progs.items()}


def make_stages(job: job_lib.Job, plan: plan_lib.Plan, weights, mesh,
                predictor: Callable | None = None,
                codec_: codec_lib.Codec | None = None) -> Stages:
  """Builds every stage of the run once.

  Args:
    job: the parsed config (its model group the loaded checkpoint's).
    plan: the run's plan (capacities fix every shape).
    weights: the placed `ttt.weights.Weights`, or None with `predictor`.
    mesh: the task mesh.
    predictor: a test double `(task, test_index, view) -> grid` decoding
      instead of the model.
    codec_: the run's `ttt.codec.Codec` (None: the cell codec).
  """
  caps, rc = plan.caps, job.run
  spec = decoders.DecodeSpec(caps.queries, caps.decode_views, caps.prompt_len,
                             rc.length_bucket, job.data.max_len, rc.seed,
                             codec_)
  vote_spec = select.SelectSpec(caps.queries, caps.groups, caps.per_group,
                                plan.per_view, job.data.max_len,
                                rc.length_bucket, codec_)
  return Stages(
      adapt=adapt.make_adapt(
          ttt=job.ttt, adapter=job.adapter, model=job.model,
          data_cfg=job.data, seed=rc.seed, length_bucket=rc.length_bucket,
          weights=weights, mesh=mesh, caps=caps, codec_=codec_),
      decoder=(decoders.make(job.decode, weights, mesh, spec)
               if predictor is None
               else decoders.predictor_decoder(predictor)),
      selection=select.make_selection(job.vote, weights, mesh, vote_spec))


def run_chunk(stages: Stages, plan: plan_lib.Plan, chunk: list[int]
              ) -> tuple[list[dict], dict, dict, dict]:
  """Runs one chunk of tasks (indices into `plan.tasks`).

  Returns:
    (task records in chunk order, timings in seconds per stage, counts:
    real and computed TTT / prompt tokens and model calls of decoding,
    memory: {stage: peak resident GiB} (`metrics.MemoryMeter`)).
  """
  clock = _Clock()
  cd = stages.adapt.build(plan, chunk)
  clock.tick("data")
  adapters, ttt_metrics = stages.adapt.train(cd)
  ttt_tokens = stages.adapt.tokens(cd)
  cd = cd._replace(datasets=None)  # the rows are done with: free them
  clock.tick("ttt")
  queries, slots = plan.chunk_queries(cd.slots)
  logging.info("  decoding %d queries", len(queries))
  decoded = stages.decoder.decode(queries, slots, adapters)
  clock.tick("inference")
  attempts, vote_times = stages.selection.select(
      queries, slots, decoded.predictions, adapters)
  del adapters
  clock.tick("voting")
  records = evaluate.chunk_records(plan, chunk, cd.slots, queries,
                                   decoded.predictions, attempts, ttt_metrics,
                                   stages.decoder.empty_slots)
  counts = dict(ttt_tokens,
                prompt_real=float(decoded.prompt_tokens[0]),
                prompt_computed=float(decoded.prompt_tokens[1]),
                decode_calls=float(decoded.model_calls))
  return (records, dict(clock.times, **vote_times), counts,
          dict(clock.memory.stages))


def _protocol_dir(wd, job) -> str:
  """`<workdir>/protocol/<digest of the run's fingerprint>`: a run-wide
  adaptation's saved state is only ever resumed by the same config (a run
  killed before its first chunk has no chunk for `open_workdir` to check;
  the state file records the digest too, so a state copied into another
  config's folder is refused). Other configs' states are kept: a second
  config started in the same workdir never deletes the first's."""
  digest = hashlib.sha256(json.dumps(
      evaluate.strict(job_lib.fingerprint(job)), sort_keys=True).encode()
                          ).hexdigest()[:16]
  return os.path.join(wd.file("protocol"), digest)


def test_double_job(job):
  """The job a test double (`predictor`) runs: it answers each view once
  (and a rule that rescores with the model is refused:
  `select.make_selection`), so its decode group -- and its fingerprint --
  is greedy, one sample."""
  return job._replace(decode=dataclasses.replace(
      job.decode, method="greedy", temperature=0.0, samples=1))


def chunk_size_warning(memory, chunk_size: int, n_tasks: int
                       ) -> str | None:
  """What the log says when the memory plan cut `run.chunk_size` (None when
  it did not: a run of fewer tasks than `chunk_size` has smaller chunks by
  construction, not for want of memory)."""
  if memory.per_bucket:
    return (f"memory: chunks sized per length bucket {memory.per_bucket} "
            f"(run.chunk_size={chunk_size} does not fit "
            f"{memory.budget:.2f} GiB at every length)")
  if memory.chunk_size < min(chunk_size, n_tasks):
    return (f"memory: chunks of {memory.chunk_size} tasks (run.chunk_size="
            f"{chunk_size} does not fit {memory.budget:.2f} GiB)")
  return None


def _max_into(total: dict, part: dict) -> None:
  for k, v in part.items():
    total[k] = max(total.get(k, 0.0), v)


class _Clock:
  """Seconds and peak resident memory per stage since the last tick."""

  def __init__(self):
    self.t0, self.times = time.perf_counter(), {}
    self.memory = metrics.MemoryMeter()

  def tick(self, stage: str) -> None:
    now = time.perf_counter()
    self.times[stage], self.t0 = now - self.t0, now
    self.memory.tick(stage)


# ------------------------------------------------------------------------------
# The whole run
# ------------------------------------------------------------------------------


def run(config, workdir: str, predictor: Callable | None = None,
        stop_after_chunks: int = 0) -> dict:
  """The main job (see module docstring). Returns the summary dict.

  Args:
    config: ConfigDict with groups run, model, adapter, data, ttt, views,
      decode, vote and `init_from` (see `configs/arc_ttt.py`).
    workdir: output directory; an existing one is resumed.
    predictor: optional test double replacing the model's decoding (one
      answer per view: the decode group is ignored).
    stop_after_chunks: stop after this many new chunks (0: run all) --
      how tests simulate a killed run.

  Several hosts (`ttt.sharding.initialize_distributed`): every host calls
  `run` with the same arguments; each builds the TTT data of its own tasks,
  process 0 writes every file and decides which chunks a resumed run skips.
  Hosts that cannot read process 0's workdir return a summary of the chunks
  they ran; process 0's is the run's.
  """
  compile_clock, t_start = metrics.CompileClock(), time.perf_counter()
  job = job_lib.parse(config)
  if predictor is not None:
    job = test_double_job(job)
  wd = workdir_lib.open_workdir(
      workdir, job_lib.fingerprint(job), job.run.overwrite,
      config.to_json_best_effort(indent=2)
      if hasattr(config, "to_json_best_effort")
      else json.dumps(job._asdict(), default=str, indent=2),
      job_lib.NEUTRAL)
  try:
    return _run(job, wd, predictor, stop_after_chunks, compile_clock, t_start)
  finally:
    wd.close()
    compile_clock.close()


def _run(job, wd, predictor, stop_after_chunks, compile_clock, t_start):
  # --- tasks and plan ---------------------------------------------------------
  writer = metrics.MetricsWriter(wd.file("metrics.jsonl"))
  codec = codec_lib.make(job.data, job.init_from)  # cells, or MARC's text
  tasks, skipped = plan_lib.load_tasks(job.run, codec)  # (arc.py logs each
  # skip)
  if any(t.test[k][1] is None for t in tasks for k in range(len(t.test))):
    logging.info("tasks without a known answer are predicted and marked "
                 "unscored (correct: null)")
  mesh = sharding.make_mesh()
  with_model = predictor is None
  plan = plan_lib.plan_run(tasks, mesh, run=job.run, data_cfg=job.data,
                           views_cfg=job.views, decode=job.decode,
                           trains=with_model and job.ttt.enabled,
                           codec_=codec)
  for n, why in plan.too_long.items():
    logging.warning("skipping task %r: %s", tasks[n].id, why)
  logging.info("%d tasks to run in %d chunks (%d skipped at load); "
               "capacities %s", len(tasks), len(plan.chunks), len(skipped),
               plan.caps)

  # --- the base model and the stages ------------------------------------------
  t0 = time.perf_counter()
  weights = None
  if with_model:
    weights, model_cfg = weights_lib.load(job.init_from, job.model,
                                          job.adapter, job.run.seed,
                                          codec.vocab)
    job = job._replace(model=model_cfg)  # the checkpoint's shape wins
    weights = weights_lib.place(weights, mesh,
                                weights_lib.compute_dtype(model_cfg))
    weights_lib.check_finite(weights, job.init_from)
    per_task = weights_lib.count_adapter(weights)
    logging.info("model: %s, %d base parameters, adapter %s: %d parameters "
                 "per task (%.1f MB per task in training: weights, "
                 "gradients and AdamW's two moments in float32), protocol "
                 "%s", job.init_from or "UNTRAINED",
                 weights_lib.count_base(weights, job.adapter),
                 job.adapter.mode, per_task, per_task * 16 / 1e6,
                 job.ttt.protocol)
  timings = dict(model_load=time.perf_counter() - t0, data=0.0, ttt=0.0,
                 inference=0.0, voting=0.0)
  memory = None
  if with_model:  # the chunk size the memory budget allows (programs'
    # analysis at the run's shapes; smaller chunks only when it must)
    def replan(size):
      return plan_lib.plan_run(
          tasks, mesh, run=dataclasses.replace(job.run, chunk_size=size),
          data_cfg=job.data, views_cfg=job.views, decode=job.decode,
          trains=job.ttt.enabled, codec_=codec)

    budget = plan_lib.memory_budget(job.run.memory_gb)
    ids = [t.id for t in tasks]
    plan, built, memory = plan_lib.fit_memory(
        plan, lambda p: make_stages(job, p, weights, mesh, None, codec),
        replan, budget, job.data.max_len, job.run.chunk_size, mesh.size,
        workdir_lib.stored_plan(wd, budget, ids))  # (a resume's chunks)
    workdir_lib.write_plan(wd, budget, [[ids[n] for n in c]
                                        for c in plan.chunks]
                           if memory.per_bucket else None)
    logging.info("memory: budget %.2f GiB (%s), %.2f GiB resident, needs "
                 "%.2f GiB at %d tasks per chunk (%s); programs per device "
                 "%s", memory.budget, memory.source, memory.resident,
                 memory.need, memory.chunk_size, memory.rule,
                 {k: round(v, 3) for k, v in memory.programs.items()})
    warning = chunk_size_warning(memory, job.run.chunk_size, len(tasks))
    if warning:
      logging.warning("%s", warning)
  else:
    built = {plan.caps: make_stages(job, plan, weights, mesh, predictor,
                                    codec)}

  # --- a run-wide protocol's adaptation (resumable; per_task: nothing) ----
  if with_model:  # each set of stages (one per slot count) holds it: the
    # first adapts, the others read the state it saved (the same seconds)
    state_dir = _protocol_dir(wd, job)
    timings["ttt"] += max(s.adapt.prepare(plan, state_dir)
                          for s in built.values())

  # --- the chunks (finished ones resumed) ---------------------------------
  results: list[dict] = []
  counts: dict[str, float] = {}
  peaks: dict[str, float] = {}  # stage -> peak resident GiB over chunks
  new_chunks = done_tasks = 0
  setup_peak = metrics.peak_rss_bytes() / metrics.GB  # loading, compiling
  t_loop = time.perf_counter()
  for c, chunk in enumerate(plan.chunks):
    cplan = plan.at(c)  # the chunk's capacities (sized per length bucket)
    stored = workdir_lib.stored_chunk(wd, c, [tasks[n].id for n in chunk],
                                      cplan.caps.tasks)
    # Process 0's files decide, so every host skips or runs the same chunks.
    if bool(sharding.broadcast(np.int32(stored is not None))):
      if stored is not None:  # hosts without process 0's files lack them
        results += stored["records"]
        workdir_lib.add_into(timings, stored.get("timings", {}))
        workdir_lib.add_into(counts, stored.get("padding", {}))
        _max_into(peaks, stored.get("memory_gb", {}))
      logging.info("chunk %d/%d: already done (resumed)", c + 1,
                   len(plan.chunks))
      continue
    if stop_after_chunks and new_chunks >= stop_after_chunks:
      logging.info("stopping after %d chunks (resume with the same "
                   "workdir)", new_chunks)
      sharding.barrier("pipeline.run")
      return dict(stopped=True, chunks_done=c)
    logging.info("chunk %d/%d: %d tasks", c + 1, len(plan.chunks), len(chunk))
    records, t, pad, mem = run_chunk(built[cplan.caps], cplan, chunk)
    workdir_lib.write_chunk(wd, c, dict(records=records, timings=t,
                                        padding=pad, memory_gb=mem,
                                        slots=cplan.caps.tasks))
    _max_into(peaks, mem)
    new_chunks += 1
    done_tasks += len(chunk)
    results += records
    workdir_lib.add_into(timings, t)
    workdir_lib.add_into(counts, pad)
    partial = evaluate.score(results)
    remaining = sum(len(x) for x in plan.chunks[c + 1:])
    eta = (time.perf_counter() - t_loop) / max(done_tasks, 1) * remaining
    writer.write(c, chunk=c, tasks_done=len(results),
                 pass2=partial["pass2"], coverage=partial["coverage"],
                 **{f"time_{k}": v for k, v in t.items()})
    logging.info("chunk %d/%d: %d/%d tasks, pass@2 so far %d/%d (%.1f%%), "
                 "ETA %.0fs", c + 1, len(plan.chunks), len(results),
                 len(tasks), partial["pass2_tasks"], partial["scored_tasks"],
                 100 * partial["pass2"], eta)

  # --- summary, submission, report --------------------------------------------
  at = {t.id: n for n, t in enumerate(tasks)}  # the run's order
  results = skipped + sorted(results, key=lambda r: at[r["id"]])
  summary = evaluate.score(results)
  timings["compile"] = compile_clock.seconds
  timings["total"] = time.perf_counter() - t_start
  summary["timings_s"] = timings
  summary["padded_share"] = {
      k: (round(1 - counts[f"{k}_real"] / counts[f"{k}_computed"], 4)
          if counts.get(f"{k}_computed") else None)
      for k in ("ttt", "prompt")}
  summary["decode"] = dict(
      method=job.decode.method, model_calls=int(counts.get("decode_calls", 0)),
      prompt_tokens=int(counts.get("prompt_real", 0)),
      seconds=round(timings["inference"], 2))
  summary["untrained_model"] = not job.init_from and with_model
  summary["ttt"] = dict(
      enabled=job.ttt.enabled, protocol=job.ttt.protocol,
      steps_per_task=job.ttt.steps, adapter_mode=job.adapter.mode,
      **({} if weights is None else dict(
          adapter_params_per_task=weights_lib.count_adapter(weights),
          # weights, gradients and AdamW's two moments, float32
          adapter_train_mb_per_task=round(
              weights_lib.count_adapter(weights) * 16 / 1e6, 2))))
  summary["memory_gb"] = dict(
      peak_rss=round(max([setup_peak, *peaks.values()]), 3),
      setup=round(setup_peak, 3), stages=peaks,
      **({} if memory is None else dict(
          budget=round(memory.budget, 3), budget_source=memory.source,
          resident=round(memory.resident, 3), need=round(memory.need, 3),
          chunk_size=memory.chunk_size, rule=memory.rule,
          chunk_size_per_bucket=memory.per_bucket,
          programs={k: round(v, 4) for k, v in memory.programs.items()})))
  if sharding.is_main():
    sub = evaluate.submission(results)
    evaluate.check_submission(sub, plan_lib.expected_entries(
        job.run, tasks, [r["id"] for r in results]))
    evaluate.write_json(wd.file("submission.json"), sub)
    evaluate.write_json(wd.file("results.json"),
                        dict(summary=summary, tasks=results))
    header = job_lib.describe(job, summary["decode"]["model_calls"],
                              summary["untrained_model"],
                              weights.source if weights else "")
    try:  # results.json and submission.json are already complete
      evaluate.write_report(wd.path, results, summary,
                            {t.id: t for t in tasks}, timings, header,
                            job.run.num_renderings)
    except Exception:  # noqa: BLE001 (logged in full; the run's files stay)
      logging.exception("report.md could not be written (results.json and "
                        "submission.json are complete)")
    writer.write(len(plan.chunks), final=True, **summary)
  if summary.get("no_answer_inputs"):
    logging.warning(evaluate.NO_ANSWER.format(
        n=summary["no_answer_inputs"], of=summary["run_inputs"]))
  logging.info("done: pass@2 %d/%d tasks (%.1f%%), coverage %.1f%%, "
               "written to %s; time %s", summary["pass2_tasks"],
               summary["scored_tasks"], 100 * summary["pass2"],
               100 * summary["coverage"], wd.path,
               {k: round(v, 1) for k, v in timings.items()})
  sharding.barrier("pipeline.run")
  return summary

