// Passkey ceremonies of the Tessera console: enrolment, sign-in and decisions.
// Served as a file (the console allows no inline script). Every step's challenge comes from
// the broker; the broker checks every answer.
(function () {
  "use strict";

  function b64u(buffer) {
    var bytes = new Uint8Array(buffer), text = "";
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function unb64u(s) {
    var text = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
    var out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  function say(text) {
    var el = document.getElementById("passkey-status");
    if (el) el.textContent = text;
  }

  async function answer(res) {
    var body = {};
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) throw new Error(body.error_description || ("the broker answered " + res.status));
    return body;
  }

  function postForm(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(fields)
    }).then(answer);
  }

  function postJson(url, value) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(value)
    }).then(answer);
  }

  function assertion(cred) {
    return {
      credential_id: b64u(cred.rawId),
      client_data: b64u(cred.response.clientDataJSON),
      authenticator_data: b64u(cred.response.authenticatorData),
      signature: b64u(cred.response.signature)
    };
  }

  function unsupported() {
    if (!window.PublicKeyCredential) {
      say("This browser cannot use passkeys here. Open the console under its host name (see above).");
      return true;
    }
    return false;
  }

  var enrol = document.getElementById("passkey-enrol");
  if (enrol) enrol.addEventListener("click", async function () {
    if (unsupported()) return;
    enrol.disabled = true;
    try {
      var codeField = document.getElementById("passkey-code");
      var code = codeField ? codeField.value.trim() : "";
      var o = await postForm("/console/passkeys/options", { csrf: enrol.dataset.csrf, code: code });
      say("Follow your authenticator's prompt…");
      var cred = await navigator.credentials.create({ publicKey: {
        challenge: unb64u(o.challenge),
        rp: { id: o.rp_id, name: "Tessera" },
        user: { id: unb64u(o.user_id), name: o.user_name, displayName: o.user_name },
        pubKeyCredParams: [{ type: "public-key", alg: -7 }, { type: "public-key", alg: -8 }],
        authenticatorSelection: { residentKey: "required", userVerification: "required" },
        excludeCredentials: o.exclude.map(function (id) { return { type: "public-key", id: unb64u(id) }; }),
        attestation: "none",
        timeout: 60000
      } });
      var r = cred.response;
      await postJson("/console/passkeys", {
        csrf: enrol.dataset.csrf,
        challenge: o.challenge,
        credential_id: b64u(cred.rawId),
        client_data: b64u(r.clientDataJSON),
        authenticator_data: b64u(r.getAuthenticatorData()),
        public_key: b64u(r.getPublicKey()),
        alg: r.getPublicKeyAlgorithm(),
        name: document.getElementById("passkey-name").value,
        code: code
      });
      say("Enrolled.");
      window.location.assign("/console/passkeys");
    } catch (e) {
      say("Not enrolled: " + e.message);
      enrol.disabled = false;
    }
  });

  var signIn = document.getElementById("passkey-sign-in");
  if (signIn) signIn.addEventListener("click", async function () {
    if (unsupported()) return;
    signIn.disabled = true;
    try {
      var o = await postJson("/console/sign-in/passkey/options", {});
      say("Follow your authenticator's prompt…");
      var cred = await navigator.credentials.get({ publicKey: {
        challenge: unb64u(o.challenge), rpId: o.rp_id, userVerification: "required", timeout: 60000
      } });
      var body = assertion(cred);
      body.challenge = o.challenge;
      if (signIn.dataset.next) body.next = signIn.dataset.next;
      var done = await postJson("/console/sign-in/passkey", body);
      window.location.assign(done.next || "/console");
    } catch (e) {
      say("Not signed in: " + e.message);
      signIn.disabled = false;
    }
  });

  var decide = document.getElementById("passkey-decide");
  if (decide) decide.addEventListener("click", async function () {
    if (unsupported()) return;
    var form = decide.closest("form");
    decide.disabled = true;
    try {
      var o = await postForm(decide.dataset.url, { csrf: form.elements.csrf.value, decision: decide.dataset.decision });
      say("Follow your authenticator's prompt…");
      var cred = await navigator.credentials.get({ publicKey: {
        challenge: unb64u(o.challenge),
        rpId: o.rp_id,
        allowCredentials: o.allow.map(function (id) { return { type: "public-key", id: unb64u(id) }; }),
        userVerification: "required",
        timeout: 60000
      } });
      var a = assertion(cred);
      form.elements.challenge.value = o.challenge;
      form.elements.credential_id.value = a.credential_id;
      form.elements.client_data.value = a.client_data;
      form.elements.authenticator_data.value = a.authenticator_data;
      form.elements.signature.value = a.signature;
      form.submit();
    } catch (e) {
      say("Nothing was decided: " + e.message);
      decide.disabled = false;
    }
  });
})();
