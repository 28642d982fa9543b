"""The activity console: static pages at `/console` that read the store's read API in the browser.

    from pipeline.console.app import console_app
    read_api.mount("/console", console_app(settings.console))   # beside the read API routes (the store's app)

Nothing is imported here, so that the settings tree (`pipeline.console.settings`) loads no web stack.
"""
