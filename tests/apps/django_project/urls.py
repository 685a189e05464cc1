from __future__ import annotations

from django.urls import path

from tests.apps.django_project import views

urlpatterns = [
    path("", views.index),
    path("form", views.form),
    path("upload", views.upload),
    path("stream", views.stream),
    path("download", views.download),
    path("boom", views.boom),
    path("stream-boom", views.stream_boom),
]
