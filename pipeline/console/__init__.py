"""The activity console: static pages at `/console` that read the store's read API in the browser.

    from pipeline.console.app import console_app
    app.mount("/console", console_app(settings.console))   # beside the read API routes

Nothing is imported here, so that the settings tree (`pipeline.console.settings`) loads no web stack.
"""
