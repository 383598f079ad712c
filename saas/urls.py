from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from apps.core.health import healthz
from apps.dashboard.views import docs

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("v1/schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularRedocView.as_view(url_name="schema"), name="docs"),
    path("docs/quickstart", docs.quickstart, name="docs_quickstart"),
    path("docs/guides/<slug:name>", docs.guide, name="docs_guide"),
    path("v1/", include("apps.api.urls")),
    path("billing/", include("apps.billing.urls")),
    path("", include("apps.dashboard.urls")),
]

handler400 = "apps.api.errors.bad_request"
handler403 = "apps.api.errors.permission_denied"
handler404 = "apps.api.errors.page_not_found"
handler500 = "apps.api.errors.server_error"
