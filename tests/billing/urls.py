"""The project's URLs, plus the billing routes while saas/urls.py does not include them yet.

Once saas/urls.py has `path("billing/", include("apps.billing.urls"))`, this adds nothing.
"""

from django.urls import include, path

from saas import urls as project_urls

handler400 = project_urls.handler400
handler403 = project_urls.handler403
handler404 = project_urls.handler404
handler500 = project_urls.handler500

urlpatterns = list(project_urls.urlpatterns)
if not any(getattr(pattern, "namespace", None) == "billing" for pattern in urlpatterns):
    urlpatterns.insert(0, path("billing/", include("apps.billing.urls")))
