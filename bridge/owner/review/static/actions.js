// Share and Delete, each behind a confirmation step, as POSTs with JSON bodies (the session
// cookie and our Origin go with them). The bridge carries them out and records them in the
// manifest, so the page learns the result by reading the manifest again (app.js: afterAction).

import { ApiError, eventPath, postJSON } from "./api.js";
import { $, show } from "./dom.js";
import { clock, dayLabel } from "./format.js";

const RECIPIENT = /^age1[02-9ac-hj-np-z]{58}$/;

export function actionError(err) {
  if (err instanceof ApiError && err.kind === "bridge-offline") {
    return "The bridge is not running: sharing and deleting need it. Start it (obscura run) "
      + `and try again. (${err.message})`;
  }
  if (err instanceof ApiError && err.kind === "unsure") {
    return `The bridge did not answer in time: it may or may not have done it. ${err.message}`;
  }
  return err instanceof ApiError ? err.message : String(err);
}

function describe(e) {
  const day = dayLabel(e.start_ms);
  const said = day === "Today" || day === "Yesterday" ? day.toLowerCase() : `on ${day}`;
  return `the clip from ${e.camera}, ${said} at ${clock(e.start_ms)}`;
}

function wireClose(dialog) {
  for (const b of dialog.querySelectorAll("[data-close]")) {
    b.addEventListener("click", () => dialog.close());
  }
}

function fail(box, err) {
  box.textContent = actionError(err);
  show(box, true);
}

export class ShareDialog {
  constructor(done) {
    this.done = done;
    this.dialog = $("share");
    this.form = $("share-form");
    this.input = $("share-recipient");
    this.error = $("share-error");
    this.next = $("share-next");
    wireClose(this.dialog);
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
    $("share-back").addEventListener("click", () => this.go("ask"));
    this.input.addEventListener("input", () => show(this.error, false));
    $("share-copy-btn").addEventListener("click", () => this.copy());
  }

  open(event) {
    this.event = event;
    this.input.value = "";
    this.go("ask");
    this.dialog.showModal();
    this.input.focus();
  }

  go(step) {
    this.step = step;
    for (const part of this.form.querySelectorAll("[data-step]")) {
      show(part, part.dataset.step === step);
    }
    show(this.error, false);
    show($("share-back"), step === "confirm");
    show(this.dialog.querySelector("[data-close]"), step !== "done");
    this.next.disabled = false;
    this.next.textContent = { ask: "Continue", confirm: "Share", done: "Done" }[step];
    if (step === "confirm") this.next.focus();
  }

  async submit() {
    if (this.step === "ask") {
      const key = this.input.value.trim();
      if (!RECIPIENT.test(key)) {
        this.error.textContent = "That is not an age public key: it starts with age1 and is 62 characters long.";
        show(this.error, true);
        this.input.focus();
        return;
      }
      $("share-what").textContent = describe(this.event);
      $("share-who").textContent = key;
      this.go("confirm");
    } else if (this.step === "confirm") {
      const event = this.event;
      this.next.disabled = true;
      this.next.textContent = "Sharing…";
      try {
        const result = await postJSON(eventPath(event.id, "share"),
          { recipient: $("share-who").textContent });
        $("share-copy").textContent = result.copy;
        $("share-name").textContent = result.name;
        $("share-command").textContent = result.command;
        this.go("done");
        this.done(event, result);
      } catch (err) {
        this.next.disabled = false;
        this.next.textContent = "Share";
        fail(this.error, err);
      }
    } else {
      this.dialog.close();
    }
  }

  async copy() {
    const text = $("share-command").textContent;
    const label = $("share-copy-btn").querySelector("span");
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else { // plain http on a LAN address: the old way
        const area = document.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.className = "offscreen";
        document.body.append(area);
        area.select();
        const ok = document.execCommand("copy");
        area.remove();
        if (!ok) throw new Error("copy refused");
      }
      label.textContent = "Copied";
    } catch {
      label.textContent = "Select it and copy";
    }
    setTimeout(() => { label.textContent = "Copy command"; }, 2500);
  }
}

export class DeleteDialog {
  constructor(done) {
    this.done = done;
    this.dialog = $("delete");
    this.error = $("delete-error");
    this.go = $("delete-go");
    wireClose(this.dialog);
    $("delete-form").addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  }

  open(event) {
    this.event = event;
    $("delete-what").textContent = describe(event);
    show(this.error, false);
    this.go.disabled = false;
    this.go.textContent = "Delete";
    this.dialog.showModal();
    this.dialog.querySelector("[data-close]").focus(); // the safe choice first
  }

  async submit() {
    const event = this.event;
    this.go.disabled = true;
    this.go.textContent = "Deleting…";
    try {
      const result = await postJSON(eventPath(event.id, "delete"), {});
      this.dialog.close();
      this.done(event, result);
    } catch (err) {
      this.go.disabled = false;
      this.go.textContent = "Delete";
      fail(this.error, err);
    }
  }
}
