// sampledrec console: security keys (WebAuthn). Loaded by a script element with src (the CSP
// allows no inline script). Each button with data-ceremony="create" or "get" runs one ceremony
// against its data-endpoint: POST endpoint/options for the options, the browser's WebAuthn
// call, then POST endpoint with the answer; the console replies with where to go next.
// Without this script (or without WebAuthn) the buttons stay hidden and the code forms work.
"use strict";

(function () {
  function decodeB64(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) {
      b64 += "=";
    }
    var raw = window.atob(b64);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) {
      out[i] = raw.charCodeAt(i);
    }
    return out.buffer;
  }

  function encodeB64(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) {
      raw += String.fromCharCode(bytes[i]);
    }
    return window.btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function csrfToken() {
    var field = document.querySelector('input[name="csrf"]');
    return field ? field.value : "";
  }

  function post(url, body) {
    return window.fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    }).then(function (response) {
      if (response.redirected) {
        // The session is no longer at this step (it expired, or another tab moved on).
        window.location.assign(response.url);
        throw new Error("the session moved on; this page is being reloaded");
      }
      return response.json().catch(function () {
        return {};
      }).then(function (doc) {
        if (!response.ok) {
          throw new Error(doc.error || "the console answered " + response.status);
        }
        return doc;
      });
    });
  }

  function descriptors(list) {
    return (list || []).map(function (c) {
      return { type: c.type, id: decodeB64(c.id), transports: c.transports };
    });
  }

  function creationOptions(o) {
    o.challenge = decodeB64(o.challenge);
    o.user.id = decodeB64(o.user.id);
    o.excludeCredentials = descriptors(o.excludeCredentials);
    return o;
  }

  function requestOptions(o) {
    o.challenge = decodeB64(o.challenge);
    o.allowCredentials = descriptors(o.allowCredentials);
    return o;
  }

  function answer(credential) {
    var r = credential.response;
    var doc = {
      id: credential.id,
      rawId: encodeB64(credential.rawId),
      type: credential.type,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: encodeB64(r.clientDataJSON) },
    };
    if (credential.authenticatorAttachment) {
      doc.authenticatorAttachment = credential.authenticatorAttachment;
    }
    if (r.attestationObject) {
      doc.response.attestationObject = encodeB64(r.attestationObject);
      if (r.getTransports) {
        doc.response.transports = r.getTransports();
      }
    }
    if (r.authenticatorData) {
      doc.response.authenticatorData = encodeB64(r.authenticatorData);
      doc.response.signature = encodeB64(r.signature);
      if (r.userHandle) {
        doc.response.userHandle = encodeB64(r.userHandle);
      }
    }
    return doc;
  }

  function run(button, status) {
    var endpoint = button.getAttribute("data-endpoint");
    var create = button.getAttribute("data-ceremony") === "create";
    var next = button.getAttribute("data-next") || "/";
    button.disabled = true;
    status.textContent = "Waiting for your security key…";
    post(endpoint + "/options", {})
      .then(function (doc) {
        return create
          ? navigator.credentials.create({ publicKey: creationOptions(doc.publicKey) })
          : navigator.credentials.get({ publicKey: requestOptions(doc.publicKey) });
      })
      .then(function (credential) {
        return post(endpoint, { credential: answer(credential), next: next });
      })
      .then(function (doc) {
        status.textContent = "Done.";
        window.location.assign(doc.next);
      })
      .catch(function (error) {
        var cancelled = error && (error.name === "NotAllowedError" || error.name === "AbortError");
        status.textContent = cancelled
          ? "The security key was not used (cancelled or timed out). Try again, or use a code."
          : "That did not work: " + error.message;
        button.disabled = false;
      });
  }

  function start() {
    if (!window.PublicKeyCredential || !navigator.credentials) {
      return;
    }
    var buttons = document.querySelectorAll("button[data-ceremony]");
    Array.prototype.forEach.call(buttons, function (button) {
      var box = button.closest(".security-key");
      var status = box ? box.querySelector(".key-status") : null;
      if (box) {
        box.hidden = false;
      }
      button.addEventListener("click", function () {
        run(button, status || document.createElement("p"));
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
