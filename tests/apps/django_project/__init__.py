"""A minimal Django project (no database, no installed apps) for the functional tests."""
