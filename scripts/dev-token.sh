#!/usr/bin/env bash
# A development identity provider for the README's "Authentication" example, made of
# openssl: an Ed25519 key of this checkout's own (target/dev-idp/key.pem, made once), its
# key set (target/dev-idp/public/jwks.json: serve that directory, and only that one, over
# HTTP for AUTH_JWKS_URL), and tokens signed with it:
#
#   scripts/dev-token.sh SUB [SCOPE] [AUDIENCE]
#
# prints a token for SUB (a user id) holding SCOPE (space-separated scopes, default
# none), for AUDIENCE (default orders-api), valid for an hour. Never for production: the
# key sits unencrypted in target/.
set -euo pipefail
cd "$(dirname "$0")/.."

sub=${1:?usage: scripts/dev-token.sh SUB [SCOPE] [AUDIENCE]}
scope=${2:-}
audience=${3:-orders-api}
dir=target/dev-idp
kid=dev-ed25519

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

mkdir -p "$dir/public"
[ -f "$dir/key.pem" ] || openssl genpkey -algorithm ed25519 -out "$dir/key.pem" 2>/dev/null
# The public key is the last 32 bytes of its DER form (RFC 8410).
x=$(openssl pkey -in "$dir/key.pem" -pubout -outform DER | tail -c 32 | b64url)
printf '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"%s","kid":"%s","alg":"EdDSA","use":"sig"}]}\n' "$x" "$kid" \
    >"$dir/public/jwks.json"

now=$(date +%s)
header=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"%s"}' "$kid" | b64url)
payload=$(printf '{"sub":"%s","aud":"%s","scope":"%s","iat":%d,"nbf":%d,"exp":%d}' \
    "$sub" "$audience" "$scope" "$now" "$now" $((now + 3600)) | b64url)
printf '%s.%s' "$header" "$payload" >"$dir/signing-input"
signature=$(openssl pkeyutl -sign -inkey "$dir/key.pem" -rawin -in "$dir/signing-input" | b64url)
echo "$header.$payload.$signature"
