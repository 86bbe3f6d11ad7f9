// The benchmark's peer: node-oidc-provider configured as close to Tessera's token endpoint
// as it goes. `client_credentials` with `client_secret_basic`; EdDSA (Ed25519) JWT access
// tokens for one resource server (resource indicators, `accessTokenFormat: 'jwt'`); five
// minutes, the same scopes. Its own defaults otherwise: the in-memory adapter (no database,
// no audit record) and no request logging.
//
// Run by the benchmark from the folder benches/peer/setup installs into:
//   PEER_PORT=8800 PEER_CLIENTS='[{"client_id":"…","client_secret":"…"}]' node server.mjs
// Prints "listening" once it accepts connections.

import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const port = Number(process.env.PEER_PORT || 8800);
const clients = JSON.parse(process.env.PEER_CLIENTS || '[]');
const scope = 'approvals:create workspaces:read workspaces:write';
const resource = 'urn:tessera:core';

const { privateKey } = generateKeyPairSync('ed25519');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'peer-ed25519', alg: 'EdDSA', use: 'sig' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: clients.map(({ client_id, client_secret }) => ({
    client_id,
    client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // Only an Ed25519 key is configured; the default (RS256) would need an RSA key.
    id_token_signed_response_alg: 'EdDSA',
    scope,
  })),
  jwks: { keys: [jwk] },
  scopes: scope.split(' '),
  cookies: { keys: ['tessera-bench-peer-cookie-key'] },
  ttl: { ClientCredentials: 300 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== resource) throw new Provider.errors.InvalidTarget();
        return {
          scope,
          audience: 'core',
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'EdDSA' } },
        };
      },
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log('listening');
});
