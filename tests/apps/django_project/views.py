"""Views of the test Django project: the same answers as the Flask app (see tests.apps.common).

require_safe rather than require_GET: it also allows HEAD, which Flask routes answer too."""

from __future__ import annotations

from collections.abc import Iterator

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from tests.apps import common


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(common.page("django"))


@csrf_exempt
@require_POST
def form(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"fields": dict(request.POST.lists())})


@csrf_exempt
@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    received = request.FILES["file"]
    summary = common.describe_upload(received.name, received.read())
    return JsonResponse({"file": summary, "fields": dict(request.POST.lists())})


@require_safe
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = common.stream_count(request.GET.get("count"))
    gate = request.GET.get("gate")

    def generate() -> Iterator[bytes]:
        for index in range(count):
            yield common.stream_chunk(index)
            if index == 0:
                marker = common.wait_for_gate(gate)
                if marker:
                    yield marker
                    return

    return StreamingHttpResponse(generate(), content_type="text/plain; charset=utf-8")


@require_safe
def download(request: HttpRequest) -> FileResponse:
    # Django's WSGI handler passes the file of a FileResponse to wsgi.file_wrapper, the
    # server's zero-copy path.
    return FileResponse(
        open(common.download_path(), "rb"),  # FileResponse closes it
        content_type="application/octet-stream",
        filename="payload.bin",
    )


@require_safe
def boom(request: HttpRequest) -> HttpResponse:
    common.fail()
    return HttpResponse("unreachable")


@require_safe
def stream_boom(request: HttpRequest) -> StreamingHttpResponse:
    def generate() -> Iterator[bytes]:
        yield common.stream_chunk(0)
        common.fail()

    return StreamingHttpResponse(generate(), content_type="text/plain; charset=utf-8")
