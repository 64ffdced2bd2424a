from __future__ import annotations

from allauth.account.models import EmailAddress
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tests.tenantproject.shop.models import Activity, Article, Label


def articles(request: HttpRequest) -> JsonResponse:
    # No filter by company: the database decides.
    return JsonResponse(
        {
            "articles": sorted(Article.objects.values_list("title", flat=True)),
            "labels": sorted(Label.objects.values_list("name", flat=True)),
        }
    )


@csrf_exempt
def new_article(request: HttpRequest) -> JsonResponse:
    article = Article.objects.create(company=request.company, title=request.POST["title"], keywords=["new"])
    return JsonResponse({"id": article.pk, "activity": list(Activity.objects.values_list("message", flat=True))})


def my_emails(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"emails": sorted(EmailAddress.objects.values_list("email", flat=True))})


class ArticleApi(APIView):
    """DRF token authentication: the user is known only inside the view."""

    def get(self, request: Request) -> Response:
        return Response(
            {
                "user": request.user.username,
                "articles": sorted(Article.objects.values_list("title", flat=True)),
            }
        )
