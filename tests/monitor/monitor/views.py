"""Views written as the application would write them: no tenant filter of their own, the policies decide."""

from __future__ import annotations

import secrets

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import django_rls
from monitor.models import Check, Member, Ping, Project
from monitor.resolvers import check_of_ping_url, project_of_api_key


def my_projects(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"projects": sorted(Project.objects.values_list("name", flat=True))})


@csrf_exempt
@require_POST
def new_project(request: HttpRequest) -> JsonResponse:
    """Create a project and work in it for the rest of the request (switch_context)."""
    project = Project.objects.create(name=request.POST["name"], owner=request.user, api_key=secrets.token_hex(32))
    django_rls.switch_context(site=project)
    Member.objects.create(project=project, user=request.user)  # Members: written in the current site only
    Check.objects.create(project=project, name="first check")
    return JsonResponse({"project": str(project.id), "checks": list(Check.objects.values_list("name", flat=True))})


def project_checks(request: HttpRequest, project: str) -> JsonResponse:
    try:
        found = Project.objects.get(pk=project)
    except Project.DoesNotExist:
        raise Http404("no such project") from None
    return JsonResponse({"project": found.name, "checks": sorted(Check.objects.values_list("name", flat=True))})


def api_checks(request: HttpRequest) -> JsonResponse:
    """The API: the project of the X-Api-Key header, as the site resolver found it (no second query)."""
    project = project_of_api_key.row(request)
    if project is None:
        return JsonResponse({"error": "unknown API key"}, status=401)
    return JsonResponse({"project": project.name, "checks": sorted(Check.objects.values_list("name", flat=True))})


@csrf_exempt
def ping(request: HttpRequest, code: str) -> HttpResponse:
    """A check's secret ping URL: the check as the site resolver found it, no query of its own."""
    check = check_of_ping_url.row(request)
    if check is None:
        return HttpResponse("not found", status=404)
    Ping.objects.create(for_check=check)
    return HttpResponse("OK")
