# Sourced by RUN steps: trust the CA bundle and use the package index that the kit passed
# as BuildKit secrets. Secrets are mounted for one RUN only and never copied into a layer.
# APT_OPTS: apt over https (the nvidia base's CUDA repository) behind a TLS proxy.
APT_OPTS=""
if [ -s /run/secrets/ca ]; then
  export SSL_CERT_FILE=/run/secrets/ca PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca
  APT_OPTS="-o Acquire::https::CAInfo=/run/secrets/ca"
fi
if [ -s /run/secrets/pypi_index ]; then
  PIP_INDEX_URL=$(cat /run/secrets/pypi_index)
  export PIP_INDEX_URL UV_DEFAULT_INDEX="$PIP_INDEX_URL"
fi
