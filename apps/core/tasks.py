"""Every Celery task's name and queue, defined once: the web side sends work by name (it never
imports worker code), `workers/tasks.py` registers each task under its name and queue, and the
Celery routes and beat schedule in the wiring read them here.

Queues (docs/architecture.md, "Queues"): `gpu` runs training and batches of local models, a fresh
worker child per task; `serve` runs local inference on workers that keep models loaded; `default`
runs the rest (validation, OpenAI proxying, billing, webhooks, the reaper).
"""

from __future__ import annotations

GPU = "gpu"
SERVE = "serve"
DEFAULT = "default"
QUEUES = (GPU, SERVE, DEFAULT)

PING = "system.ping"
VALIDATE_FILE = "files.validate"
RUN_FINE_TUNE = "jobs.run_fine_tune"
RUN_INFERENCE = "jobs.run_inference"
RUN_PROXY = "jobs.run_proxy"
RUN_BATCH = "jobs.run_batch"
# A batch whose every request goes to OpenAI waits on the network: it holds no gpu worker.
RUN_PROXY_BATCH = "jobs.run_proxy_batch"
# An eval run samples and grades with our models (gpu), or only with `openai:*` ones or none (default).
RUN_EVAL = "jobs.run_eval"
RUN_PROXY_EVAL = "jobs.run_proxy_eval"
REAP = "jobs.reap"
# An imported job's parity run, started once a place for it frees (apps.evals.parity).
START_PARITY_RUN = "evals.start_parity_run"
PARITY_WAIT_TRIES = 24 * 60  # a day of waiting (settings.PARITY_RETRY_SECONDS apart) at most
PROCESS_STRIPE_EVENT = "billing.process_stripe_event"
REPORT_USAGE = "billing.report_usage"
RECONCILE_STRIPE_EVENTS = "billing.reconcile_events"
CHECK_SPEND_ALERTS = "billing.check_spend_alerts"
DELIVER_WEBHOOK = "webhooks.deliver"
SEND_DUE_WEBHOOKS = "webhooks.send_due"

QUEUE_OF = {
    PING: DEFAULT,
    VALIDATE_FILE: DEFAULT,
    RUN_FINE_TUNE: GPU,
    RUN_INFERENCE: SERVE,
    RUN_PROXY: DEFAULT,
    RUN_BATCH: GPU,
    RUN_PROXY_BATCH: DEFAULT,
    RUN_EVAL: GPU,
    RUN_PROXY_EVAL: DEFAULT,
    REAP: DEFAULT,
    START_PARITY_RUN: DEFAULT,
    PROCESS_STRIPE_EVENT: DEFAULT,
    REPORT_USAGE: DEFAULT,
    RECONCILE_STRIPE_EVENTS: DEFAULT,
    CHECK_SPEND_ALERTS: DEFAULT,
    DELIVER_WEBHOOK: DEFAULT,
    SEND_DUE_WEBHOOKS: DEFAULT,
}
