"""The worker-side runners: a claimed job row → runtime calls → result rows, files and usage.

`workers/` has three layers (docs/architecture.md):

- `workers/tasks.py`: the Celery tasks. Thin: they name the task, its queue and limits, and hand
  the job id to `attempt.run_claimed` with one runner function.
- `workers/runners/` (this package): Django-aware. A runner reads the claimed row, turns it into
  the runtime's typed inputs, keeps the lease alive while the runtime works, and writes every
  outcome through `apps.jobs.actions`, fenced on the attempt.
- `workers/runtime/`: the ML runtime, plain Python and torch, never Django. It takes frozen
  specs and callables (progress, should_stop) and returns dataclasses.

The runners, each a module:

- `attempt`: claiming a job and running it (`run_claimed`), the heartbeat thread that keeps the
  lease and tells the work when to stop (`AttemptGuard`), and the failures every runner shares
  (internal error, out of memory).
- `artifacts`: where a model's weights are on this worker (catalog, model cache, storage).
- `finetune`: a fine-tune (classification, supervised or distillation) from the row to the model,
  with `progress` (the runtime's progress events → progress, metric events, checkpoints, the
  budget check) and `reports` (the result files: metrics, validation rows, `safe_cell`).
- `distill`: a distillation's phase before the student trains (the teacher labels the texts,
  chunk by chunk) and after (teacher and student compared). `finetune` calls it; it never
  calls `finetune`.
- `inference`: chat, completion, classification and embedding requests, batched per model.
- `batch`: a batch file of requests, in chunks, to output and error files.

Torch is imported inside functions only, once the lease is kept alive: importing a runner stays
cheap, and a fresh worker child is never reaped while it loads torch.
"""
