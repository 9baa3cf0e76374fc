# Sourced by RUN steps: trust the CA bundle and use the package index that the kit passed
# as BuildKit secrets. Secrets are mounted for one RUN only and never copied into a layer.
if [ -s /run/secrets/ca ]; then
  export SSL_CERT_FILE=/run/secrets/ca PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca
fi
if [ -s /run/secrets/pypi_index ]; then
  PIP_INDEX_URL=$(cat /run/secrets/pypi_index)
  export PIP_INDEX_URL UV_DEFAULT_INDEX="$PIP_INDEX_URL"
fi
