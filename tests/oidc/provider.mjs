// A real OpenID Provider for the tests: panva's certified oidc-provider, in
// memory, on 127.0.0.1, with its development login form (any password).
//
//   node provider.mjs PORT REDIRECT_URI [CLIENT_SECRET]
//
// The login name picks the person: "alice" -> groups [engineering];
// "bob" -> groups [security]; a "+mfa" suffix ("alice+mfa") signs in with a
// second factor (amr ["pwd", "mfa"], acr "urn:example:mfa"). Every ID token
// lasts ID_TOKEN_TTL seconds (env, default 3600); JWKS (env) sets its signing
// keys. Prints "ready" when listening.
import Provider from 'oidc-provider';

const [port, redirectUri, clientSecret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const ttl = Number(process.env.ID_TOKEN_TTL || 3600);
const GROUPS = { alice: ['engineering'], bob: ['security'], carol: ['engineering'] };

const provider = new Provider(issuer, {
  // JWKS (env): the signing keys to use, so that a test can mint bearer tokens
  // this provider could have issued; otherwise its development keys.
  ...(process.env.JWKS ? { jwks: JSON.parse(process.env.JWKS) } : {}),
  clients: [{
    client_id: 'temporal-shield',
    ...(clientSecret
      ? { client_secret: clientSecret }
      : { token_endpoint_auth_method: 'none' }),
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile'],
  claims: { openid: ['sub', 'acr', 'amr', 'auth_time'], email: ['email', 'email_verified'], profile: ['groups'] },
  acrValues: ['urn:example:pwd', 'urn:example:mfa'],
  conformIdTokenClaims: false,
  ttl: { IdToken: ttl, AccessToken: ttl },
  async findAccount(ctx, id) {
    const person = id;
    return {
      accountId: id,
      async claims() {
        return {
          sub: person,
          email: `${person}@example.com`,
          email_verified: true,
          groups: GROUPS[person] || [],
        };
      },
    };
  },
  // The development login form only sets the account: give the session the
  // methods the login name says were used (what a real IdP's MFA step does).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    grant.addOIDCClaims(['email', 'email_verified', 'groups']);
    await grant.save();
    return grant;
  },
});

// The development login form only names the account: give the sign-in the
// methods and class its login name says were used (what an IdP's MFA step does).
const { loginAccount } = provider.Session.prototype;
provider.Session.prototype.loginAccount = function withMethods(details) {
  const [person, factor] = String(details.accountId).split('+');
  const mfa = factor === 'mfa';
  return loginAccount.call(this, {
    ...details,
    accountId: person,
    acr: mfa ? 'urn:example:mfa' : 'urn:example:pwd',
    amr: mfa ? ['pwd', 'mfa'] : ['pwd'],
  });
};

provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
