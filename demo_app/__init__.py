"""idsync notes: a small offline-first desktop notes app (Tk) on idsync_client."""
