"""Each page's scripts once.

sphinx-thebe adds its inline `const THEBE_JS_URL = ...` script when Sphinx reads the sources
and Sphinx 7 lists it again (filename "" instead of None) from its registry, so the second copy
is a JavaScript SyntaxError on every page ("Identifier 'THEBE_JS_URL' has already been
declared"). Dropping exact repeats of a script from the page context fixes it for any
extension that does the same, and changes nothing else.
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _unique_scripts, priority=900)  # after the theme adds its own
    return {"parallel_read_safe": True, "parallel_write_safe": True}
