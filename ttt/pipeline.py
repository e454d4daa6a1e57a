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
    weights  = ttt.weights.load_placed(...)    # on the mesh, + ModelConfig
    stages   = make_stages(job, plan, weights, mesh)   # adapt, decode, select
    for each chunk not yet in the workdir:
      records, timings, counts = run_chunk(stages, plan, chunk)

Chunks are padded to the plan's capacities with validity masks, so every
program compiles once per run (with `run.fixed_shapes`; else once per
length bucket and task slot count: a memory budget may size chunks per
length bucket, `ttt.memory.fit_memory`, each chunk running on the stages
of its own capacities, `Plan.at`). An empty `init_from` runs an
UNTRAINED model, said loudly in the log and the report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from absl import logging

from ttt import adapt, decoders, evaluate, memory, metrics, select, sharding
from ttt import codec as codec_lib
from ttt import job as job_lib
from ttt import plan as plan_lib
from ttt import weights as weights_lib
from ttt import workdir as workdir_lib
from ttt.errors import InputError


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
    weights: the placed `ttt.weights.Weights` (None with `predictor`).
    mesh: the task mesh.
    predictor: a test double `(task, test_index, view) -> grid` decoding
      instead of the model: the stages then hold no model (no adapters,
      `ttt.adapt.no_model`; a selection rule that rescores is refused).
    codec_: the run's `ttt.codec.Codec` (None: the cell codec).
  """
  caps, rc = plan.caps, job.run
  spec = decoders.DecodeSpec(caps.queries, caps.decode_views, caps.prompt_len,
                             rc.length_bucket, job.data.max_len, rc.seed,
                             codec_)
  vote_spec = select.SelectSpec(caps.queries, caps.groups, caps.per_group,
                                plan.per_view, job.data.max_len,
                                rc.length_bucket, codec_)
  if predictor is not None:  # the stage choice: no model
    if select.rescores(job.vote):
      rescored = sorted(m for m in select.rules(job.vote)
                        if select.RULES[m].rescored)
      raise InputError(f"{rescored} needs the model (no predictor)")
    return Stages(adapt.no_model(seed=rc.seed, caps=caps),
                  decoders.predictor_decoder(predictor),
                  select.make_selection(job.vote, None, mesh, vote_spec))
  return Stages(
      adapt=adapt.make_adapt(
          ttt=job.ttt, adapter=job.adapter, model=job.model,
          data_cfg=job.data, seed=rc.seed, length_bucket=rc.length_bucket,
          weights=weights, mesh=mesh, caps=caps, codec_=codec_),
      decoder=decoders.make(job.decode, weights, mesh, spec),
      selection=select.make_selection(job.vote, weights, mesh, vote_spec))


def run_chunk(stages: Stages, plan: plan_lib.Plan, chunk: list[int]
              ) -> tuple[list[dict], dict, dict, dict]:
  """Runs one chunk of tasks (indices into `plan.tasks`).

  Returns:
    (task records in chunk order, timings in seconds per stage, counts:
    real and computed TTT / prompt tokens and model calls of decoding,
    memory: {stage: peak resident GiB} (`memory.MemoryMeter`)).
  """
  clock = memory.StageClock()
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
    job = job_lib.as_test_double(job)
  fingerprint = job_lib.fingerprint(job)  # (hashes the base: once a run)
  wd = workdir_lib.open_workdir(
      workdir, fingerprint, job.run.overwrite,
      config.to_json_best_effort(indent=2)
      if hasattr(config, "to_json_best_effort")
      else json.dumps(job._asdict(), default=str, indent=2),
      job_lib.NEUTRAL)
  try:
    return _run(job, wd, workdir_lib.state_dir(wd, fingerprint), predictor,
                stop_after_chunks, compile_clock, t_start)
  finally:
    wd.close()
    compile_clock.close()


def _run(job, wd, state_dir_, predictor, stop_after_chunks, compile_clock,
         t_start):
  # --- tasks and plan ---------------------------------------------------------
  writer = metrics.MetricsWriter(wd.file("metrics.jsonl"))
  codec = codec_lib.make(job.data, job.init_from)  # cells, or MARC's text
  tasks, skipped = plan_lib.load_tasks(job.run, codec)  # (each skip logged)
  if any(t.test[k][1] is None for t in tasks for k in range(len(t.test))):
    logging.info("tasks without a known answer are predicted and marked "
                 "unscored (correct: null)")
  model_parallel = job.run.model_parallel
  if not model_parallel and predictor is None:  # auto: the smallest fit
    model_parallel, _ = memory.fit_model_axis(SimpleNamespace(
        model=weights_lib.model_config(job.init_from, job.model,
                                       codec.vocab),
        adapter=job.adapter, ttt=job.ttt), job.data.num_sequences,
        job.data.max_len, job.run.memory_gb)
  mesh = sharding.make_mesh(model_parallel=model_parallel or 1)
  logging.info("mesh: %s", dict(mesh.shape))

  def replan(size):
    return plan_lib.plan_run(
        tasks, mesh, run=dataclasses.replace(job.run, chunk_size=size),
        data_cfg=job.data, views_cfg=job.views, decode=job.decode,
        trains=job.ttt.enabled, codec_=codec)

  plan = replan(job.run.chunk_size)
  for n, why in plan.too_long.items():
    logging.warning("skipping task %r: %s", tasks[n].id, why)
  logging.info("%d tasks to run in %d chunks (%d skipped at load); "
               "capacities %s", len(tasks), len(plan.chunks), len(skipped),
               plan.caps)

  # --- the base model and the stages ------------------------------------------
  t0 = time.perf_counter()
  weights, facts = None, dict(adapter={}, untrained=False, source="")
  if predictor is None:  # the stage choice: the model, or a test double
    weights, model_cfg, facts = weights_lib.load_placed(
        job.init_from, job.model, job.adapter, job.run.seed, codec.vocab,
        mesh, job.ttt.protocol)
    job = job._replace(model=model_cfg)  # the checkpoint's shape wins
  timings = dict(model_load=time.perf_counter() - t0, data=0.0, ttt=0.0,
                 inference=0.0, voting=0.0)
  plan, built, mem = memory.fit_run(
      plan, lambda p: make_stages(job, p, weights, mesh, predictor, codec),
      replan, job.run, job.data.max_len, sharding.axis_size(mesh), wd,
      [t.id for t in tasks])

  # --- a run-wide protocol's adaptation (resumable; per_task: nothing):
  # each set of stages (one per slot count) holds it: the first adapts,
  # the others read the state it saved (the same seconds)
  timings["ttt"] += max(s.adapt.prepare(plan, state_dir_)
                        for s in built.values())

  # --- the chunks (finished ones resumed) ---------------------------------
  tally = workdir_lib.Tally(timings)
  new_chunks = done_tasks = 0
  setup_peak = memory.peak_rss_bytes() / memory.GB  # loading, compiling
  t_loop = time.perf_counter()
  for c, chunk in enumerate(plan.chunks):
    cplan = plan.at(c)  # the chunk's capacities (sized per length bucket)
    stored = workdir_lib.stored_chunk(wd, c, [tasks[n].id for n in chunk],
                                      cplan.caps.tasks)
    # Process 0's files decide, so every host skips or runs the same chunks.
    if bool(sharding.broadcast(np.int32(stored is not None))):
      if stored is not None:  # hosts without process 0's files lack them
        tally.add(stored)
      logging.info("chunk %d/%d: already done (resumed)", c + 1,
                   len(plan.chunks))
      continue
    if stop_after_chunks and new_chunks >= stop_after_chunks:
      logging.info("stopping after %d chunks (resume with the same "
                   "workdir)", new_chunks)
      sharding.barrier("pipeline.run")
      return dict(stopped=True, chunks_done=c)
    logging.info("chunk %d/%d: %d tasks", c + 1, len(plan.chunks), len(chunk))
    records, t, pad, peak = run_chunk(built[cplan.caps], cplan, chunk)
    done = dict(records=records, timings=t, padding=pad, memory_gb=peak,
                slots=cplan.caps.tasks)
    workdir_lib.write_chunk(wd, c, done)
    tally.add(done)
    new_chunks += 1
    done_tasks += len(chunk)
    partial = evaluate.score(tally.results)
    remaining = sum(len(x) for x in plan.chunks[c + 1:])
    eta = (time.perf_counter() - t_loop) / max(done_tasks, 1) * remaining
    writer.write(c, chunk=c, tasks_done=len(tally.results),
                 pass2=partial["pass2"], coverage=partial["coverage"],
                 **{f"time_{k}": v for k, v in t.items()})
    logging.info("chunk %d/%d: %d/%d tasks, pass@2 so far %d/%d (%.1f%%), "
                 "ETA %.0fs", c + 1, len(plan.chunks), len(tally.results),
                 len(tasks), partial["pass2_tasks"], partial["scored_tasks"],
                 100 * partial["pass2"], eta)

  # --- summary, submission, report --------------------------------------------
  at = {t.id: n for n, t in enumerate(tasks)}  # the run's order
  results = skipped + sorted(tally.results, key=lambda r: at[r["id"]])
  timings["compile"] = compile_clock.seconds
  timings["total"] = time.perf_counter() - t_start
  summary = evaluate.summarise(results, timings, tally.counts,
                               job.decode.method)
  summary.update(untrained_model=facts["untrained"], ttt=dict(
      enabled=job.ttt.enabled, protocol=job.ttt.protocol,
      steps_per_task=job.ttt.steps, adapter_mode=job.adapter.mode,
      **facts["adapter"]), memory_gb=memory.summary(mem, setup_peak,
                                                     tally.peaks))
  if sharding.is_main():
    header = job_lib.describe(job, summary["decode"]["model_calls"],
                              summary["untrained_model"], facts["source"])
    evaluate.write_outputs(wd.path, results, summary, tasks, header,
                           job.run.num_renderings, plan_lib.expected_entries(
                               job.run, tasks, [r["id"] for r in results]))
    writer.write(len(plan.chunks), final=True, **summary)
  evaluate.log_done(summary, wd.path)
  sharding.barrier("pipeline.run")
  return summary

