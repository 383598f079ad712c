from django.urls import path

from apps.dashboard.views import (
    aliases,
    arriving,
    batches,
    billing,
    evals,
    files,
    fine_tuning,
    imports,
    keys,
    models,
    organizations,
    playground,
    projects,
    team,
    usage,
    webhooks,
)

app_name = "dashboard"

urlpatterns = [
    path("", arriving.home, name="home"),
    path("verify-email/resend", arriving.resend_verification, name="resend_verification"),
    path("organizations/switch", organizations.switch_organization, name="switch_organization"),
    path("organizations/new", organizations.organization_new, name="organization_new"),
    path("organization/", organizations.organization_settings, name="organization"),
    path("organization/rename", organizations.organization_rename, name="organization_rename"),
    path("organization/slug", organizations.organization_slug, name="organization_slug"),
    path("team/", team.team, name="team"),
    path("team/members/<int:membership_id>/role", team.member_role, name="member_role"),
    path("team/members/<int:membership_id>/remove", team.member_remove, name="member_remove"),
    path("team/invitations/<int:invitation_id>/resend", team.invitation_resend, name="invitation_resend"),
    path("team/invitations/<int:invitation_id>/revoke", team.invitation_revoke, name="invitation_revoke"),
    path("invitations/<str:token>/", team.accept_invitation, name="accept_invitation"),
    path("projects/", projects.project_list, name="projects"),
    path("projects/<str:project_id>/", projects.project_detail, name="project"),
    path("projects/<str:project_id>/rename", projects.project_rename, name="project_rename"),
    path("projects/<str:project_id>/delete", projects.project_delete, name="project_delete"),
    path("projects/<str:project_id>/getting-started/sample", projects.use_sample, name="use_sample"),
    path(
        "projects/<str:project_id>/getting-started/dismiss",
        projects.dismiss_checklist,
        name="dismiss_checklist",
    ),
    path("projects/<str:project_id>/api-keys/", keys.api_keys, name="api_keys"),
    path(
        "projects/<str:project_id>/api-keys/<str:prefix>/revoke", keys.api_key_revoke, name="api_key_revoke"
    ),
    path("projects/<str:project_id>/webhooks/", webhooks.webhook_list, name="webhooks"),
    path("projects/<str:project_id>/webhooks/<str:endpoint_id>/", webhooks.webhook_detail, name="webhook"),
    path(
        "projects/<str:project_id>/webhooks/<str:endpoint_id>/update",
        webhooks.webhook_update,
        name="webhook_update",
    ),
    path(
        "projects/<str:project_id>/webhooks/<str:endpoint_id>/rotate",
        webhooks.webhook_rotate,
        name="webhook_rotate",
    ),
    path(
        "projects/<str:project_id>/webhooks/<str:endpoint_id>/test",
        webhooks.webhook_test,
        name="webhook_test",
    ),
    path(
        "projects/<str:project_id>/webhooks/<str:endpoint_id>/deliveries/<int:delivery_id>/resend",
        webhooks.webhook_resend,
        name="webhook_resend",
    ),
    path(
        "projects/<str:project_id>/webhooks/<str:endpoint_id>/delete",
        webhooks.webhook_delete,
        name="webhook_delete",
    ),
    path("projects/<str:project_id>/files/", files.file_list, name="files"),
    path("projects/<str:project_id>/files/upload", files.file_upload, name="file_upload"),
    path("projects/<str:project_id>/files/<str:file_id>/", files.file_detail, name="file"),
    path("projects/<str:project_id>/files/<str:file_id>/status", files.file_status, name="file_status"),
    path("projects/<str:project_id>/files/<str:file_id>/content", files.file_content, name="file_content"),
    path("projects/<str:project_id>/files/<str:file_id>/delete", files.file_delete, name="file_delete"),
    path("projects/<str:project_id>/fine-tuning/", fine_tuning.job_list, name="jobs"),
    path("projects/<str:project_id>/fine-tuning/new", fine_tuning.job_new, name="job_new"),
    path("projects/<str:project_id>/fine-tuning/estimate", fine_tuning.job_estimate, name="job_estimate"),
    # Before the job's own path, which would take "import-openai" for a job id.
    path(
        "projects/<str:project_id>/fine-tuning/import-openai/",
        imports.openai_import_page,
        name="openai_import",
    ),
    path("projects/<str:project_id>/fine-tuning/<str:job_id>/", fine_tuning.job_detail, name="job"),
    path(
        "projects/<str:project_id>/fine-tuning/<str:job_id>/status", fine_tuning.job_status, name="job_status"
    ),
    path(
        "projects/<str:project_id>/fine-tuning/<str:job_id>/metrics.json",
        fine_tuning.job_metrics,
        name="job_metrics",
    ),
    path(
        "projects/<str:project_id>/fine-tuning/<str:job_id>/cancel", fine_tuning.job_cancel, name="job_cancel"
    ),
    path("projects/<str:project_id>/models/", models.model_list, name="models"),
    # Model names contain ':' (ft:base:org:suffix:job) and may contain '/' (hub ids).
    path(
        "projects/<str:project_id>/models/<path:model_name>/download",
        models.model_download,
        name="model_download",
    ),
    path(
        "projects/<str:project_id>/models/<path:model_name>/delete", models.model_delete, name="model_delete"
    ),
    path("projects/<str:project_id>/models/<path:model_name>/", models.model_detail, name="model"),
    path("projects/<str:project_id>/playground/", playground.playground, name="playground"),
    path("projects/<str:project_id>/playground/chat", playground.chat, name="playground_chat"),
    path("projects/<str:project_id>/playground/classify", playground.classify, name="playground_classify"),
    path("projects/<str:project_id>/batches/", batches.batch_list, name="batches"),
    path("projects/<str:project_id>/batches/new", batches.batch_create, name="batch_create"),
    path("projects/<str:project_id>/batches/<str:batch_id>/", batches.batch_detail, name="batch"),
    path(
        "projects/<str:project_id>/batches/<str:batch_id>/status", batches.batch_status, name="batch_status"
    ),
    path(
        "projects/<str:project_id>/batches/<str:batch_id>/cancel", batches.batch_cancel, name="batch_cancel"
    ),
    path(
        "projects/<str:project_id>/batches/<str:batch_id>/output.jsonl",
        batches.batch_output,
        name="batch_output",
    ),
    path(
        "projects/<str:project_id>/batches/<str:batch_id>/errors.jsonl",
        batches.batch_errors,
        name="batch_errors",
    ),
    path(
        "projects/<str:project_id>/batches/<str:batch_id>/results.csv",
        batches.batch_results_csv,
        name="batch_results_csv",
    ),
    path("projects/<str:project_id>/evals/", evals.eval_list, name="evals"),
    path("projects/<str:project_id>/evals/<str:eval_id>/", evals.eval_detail, name="eval"),
    path("projects/<str:project_id>/evals/<str:eval_id>/compare", evals.eval_compare, name="eval_compare"),
    path("projects/<str:project_id>/evals/<str:eval_id>/runs/<str:run_id>/", evals.eval_run, name="eval_run"),
    path(
        "projects/<str:project_id>/evals/<str:eval_id>/runs/<str:run_id>/status",
        evals.eval_run_status,
        name="eval_run_status",
    ),
    path(
        "projects/<str:project_id>/evals/<str:eval_id>/runs/<str:run_id>/cancel",
        evals.eval_run_cancel,
        name="eval_run_cancel",
    ),
    # Alias names hold an '@' (support-bot@prod), which <str:…> takes as it is.
    path("projects/<str:project_id>/aliases/", aliases.alias_list, name="aliases"),
    path("projects/<str:project_id>/aliases/new", aliases.alias_create, name="alias_create"),
    path("projects/<str:project_id>/aliases/<str:name>/", aliases.alias_detail, name="alias"),
    path("projects/<str:project_id>/aliases/<str:name>/move", aliases.alias_move, name="alias_move"),
    path(
        "projects/<str:project_id>/aliases/<str:name>/rollback", aliases.alias_rollback, name="alias_rollback"
    ),
    path("projects/<str:project_id>/aliases/<str:name>/update", aliases.alias_update, name="alias_update"),
    path("projects/<str:project_id>/aliases/<str:name>/delete", aliases.alias_delete, name="alias_delete"),
    path("usage/", usage.usage, name="usage"),
    path("usage/daily.json", usage.usage_daily, name="usage_daily"),
    path("usage/export.csv", usage.usage_export, name="usage_export"),
    path("billing/", billing.billing_page, name="billing"),
    path("billing/checkout", billing.checkout, name="billing_checkout"),
    path("billing/checkout/return", billing.checkout_return, name="billing_return"),
    path("billing/portal", billing.portal, name="billing_portal"),
    path("billing/limits", billing.limits, name="billing_limits"),
    path("billing/openai-key", billing.openai_key, name="billing_openai_key"),
    path("billing/openai-key/remove", billing.openai_key_remove, name="billing_openai_key_remove"),
]
