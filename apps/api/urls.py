from django.urls import path

from apps.api.views import (
    aliases,
    batches,
    evals,
    files,
    fine_tuning,
    imports,
    inference,
    models,
    usage,
    webhooks,
)

app_name = "api"

urlpatterns = [
    path("files", files.FileListView.as_view(), name="files"),
    path("files/<str:file_id>", files.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", files.FileContentView.as_view(), name="file_content"),
    path("fine_tuning/jobs", fine_tuning.FineTuningJobListView.as_view(), name="fine_tuning_jobs"),
    path(
        "fine_tuning/jobs/estimate", fine_tuning.FineTuningEstimateView.as_view(), name="fine_tuning_estimate"
    ),
    path(
        "fine_tuning/jobs/<str:job_id>", fine_tuning.FineTuningJobDetailView.as_view(), name="fine_tuning_job"
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/cancel",
        fine_tuning.FineTuningJobCancelView.as_view(),
        name="ft_cancel",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/pause", fine_tuning.FineTuningJobPauseView.as_view(), name="ft_pause"
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/resume",
        fine_tuning.FineTuningJobResumeView.as_view(),
        name="ft_resume",
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/events", fine_tuning.FineTuningEventsView.as_view(), name="ft_events"
    ),
    path(
        "fine_tuning/jobs/<str:job_id>/checkpoints",
        fine_tuning.FineTuningCheckpointsView.as_view(),
        name="ft_checkpoints",
    ),
    path("fine_tuning/alpha/graders/run", evals.GraderRunView.as_view(), name="graders_run"),
    path("fine_tuning/alpha/graders/validate", evals.GraderValidateView.as_view(), name="graders_validate"),
    path("imports/openai", imports.OpenAIImportView.as_view(), name="import_openai"),
    path("imports/openai/jobs", imports.OpenAIJobsView.as_view(), name="import_openai_jobs"),
    path("imports/openai/files", imports.OpenAIFilesView.as_view(), name="import_openai_files"),
    path("aliases", aliases.AliasListView.as_view(), name="aliases"),
    path("aliases/<str:name>", aliases.AliasDetailView.as_view(), name="alias"),
    path("aliases/<str:name>/move", aliases.AliasMoveView.as_view(), name="alias_move"),
    path("aliases/<str:name>/rollback", aliases.AliasRollbackView.as_view(), name="alias_rollback"),
    path("aliases/<str:name>/moves", aliases.AliasMovesView.as_view(), name="alias_moves"),
    path("evals", evals.EvalListView.as_view(), name="evals"),
    path("evals/<str:eval_id>", evals.EvalDetailView.as_view(), name="eval"),
    path("evals/<str:eval_id>/runs", evals.EvalRunListView.as_view(), name="eval_runs"),
    path("evals/<str:eval_id>/runs/<str:run_id>", evals.EvalRunDetailView.as_view(), name="eval_run"),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/cancel",
        evals.EvalRunCancelView.as_view(),
        name="eval_run_cancel",
    ),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/output_items",
        evals.OutputItemListView.as_view(),
        name="eval_output_items",
    ),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/output_items/<str:output_item_id>",
        evals.OutputItemDetailView.as_view(),
        name="eval_output_item",
    ),
    path("chat/completions", inference.ChatCompletionsView.as_view(), name="chat_completions"),
    path("completions", inference.CompletionsView.as_view(), name="completions"),
    path("classifications", inference.ClassificationsView.as_view(), name="classifications"),
    path("embeddings", inference.EmbeddingsView.as_view(), name="embeddings"),
    path("batches", batches.BatchListView.as_view(), name="batches"),
    path("batches/<str:batch_id>", batches.BatchDetailView.as_view(), name="batch"),
    path("batches/<str:batch_id>/cancel", batches.BatchCancelView.as_view(), name="batch_cancel"),
    path("models", models.ModelListView.as_view(), name="models"),
    path("models/<path:model>/content", models.ModelContentView.as_view(), name="model_content"),
    path("models/<path:model>", models.ModelDetailView.as_view(), name="model"),
    path("usage", usage.UsageView.as_view(), name="usage"),
    path("usage/costs", usage.UsageCostsView.as_view(), name="usage_costs"),
    path("webhook_endpoints", webhooks.WebhookEndpointListView.as_view(), name="webhook_endpoints"),
    path(
        "webhook_endpoints/<str:endpoint_id>",
        webhooks.WebhookEndpointDetailView.as_view(),
        name="webhook_endpoint",
    ),
    path(
        "webhook_endpoints/<str:endpoint_id>/rotate_secret",
        webhooks.WebhookEndpointRotateView.as_view(),
        name="webhook_endpoint_rotate",
    ),
    path(
        "webhook_endpoints/<str:endpoint_id>/test",
        webhooks.WebhookEndpointTestView.as_view(),
        name="webhook_endpoint_test",
    ),
    path("webhook_event_types", webhooks.WebhookEventTypesView.as_view(), name="webhook_event_types"),
]
