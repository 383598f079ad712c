from django.urls import path

from apps.dashboard.views import keys, organizations, placeholders, projects, team

app_name = "dashboard"

urlpatterns = [
    path("", organizations.home, name="home"),
    path("organizations/switch", organizations.switch_organization, name="switch_organization"),
    path("organizations/new", organizations.organization_new, name="organization_new"),
    path("team/", team.team, name="team"),
    path("team/members/<int:membership_id>/role", team.member_role, name="member_role"),
    path("team/members/<int:membership_id>/remove", team.member_remove, name="member_remove"),
    path("invitations/<str:token>/", team.accept_invitation, name="accept_invitation"),
    path("projects/", projects.project_list, name="projects"),
    path("projects/<str:project_id>/", projects.project_detail, name="project"),
    path("projects/<str:project_id>/rename", projects.project_rename, name="project_rename"),
    path("projects/<str:project_id>/delete", projects.project_delete, name="project_delete"),
    path("projects/<str:project_id>/api-keys/", keys.api_keys, name="api_keys"),
    path(
        "projects/<str:project_id>/api-keys/<str:prefix>/revoke", keys.api_key_revoke, name="api_key_revoke"
    ),
    path("projects/<str:project_id>/files/", placeholders.files, name="files"),
    path("projects/<str:project_id>/fine-tuning/", placeholders.jobs, name="jobs"),
    path("projects/<str:project_id>/models/", placeholders.models, name="models"),
    path("projects/<str:project_id>/playground/", placeholders.playground, name="playground"),
    path("projects/<str:project_id>/batches/", placeholders.batches, name="batches"),
    path("usage/", placeholders.usage, name="usage"),
    path("billing/", placeholders.billing, name="billing"),
]
