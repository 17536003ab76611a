"""The pieces of the hostile-MIME-safe parser; the public entry is :mod:`gateway.domain.mail_parse`
(``parse_mail`` and the names callers use), whose docstring gives the design. Pure: stdlib only.

One module per concept, imported in this order (none imports a later one):

- ``model``: ``MailFormatError``, ``MimeLimits``, ``ParsedAttachment``, ``ParsedMail``.
- ``decoding``: bytes to text: MIME charsets, RFC 2047 encoded-words, RFC 2045 transfer encodings.
- ``headers``: cutting a header section (the caps), unfolding, field lookup, the compat32 parameter
  ``Message``.
- ``fields``: what the top-level fields mean: addresses, dates, message ids, one-line display text.
- ``filenames``: ``safe_filename`` and the fallback names.
- ``html_text``: ``html_to_text``.
- ``mime``: the explicit-stack MIME walk and the multipart splitter.

Underscored names are shared between these modules but are not for use outside the package.
"""
