// The player: a modal <dialog> with an HTML5 <video> on /api/events/{id}/video (the server
// decrypts the ranges the player asks for), Download, Share and Delete, and the event's
// neighbours a key away. Esc closes it (the dialog's own cancel), and the focus goes back to
// the card that opened it.

import { eventPath } from "./api.js";
import { $, el, icon, show } from "./dom.js";
import { bytes, duration, longWhen, shortKey } from "./format.js";
import { liveShares, subjectChips } from "./timeline.js";

export class Player {
  /** hooks: {neighbour(id, step) -> Promise<event|null>, canStep(id, step) -> bool,
   *  share(event), remove(event), playFailed(event) -> Promise<string|null>} */
  constructor(hooks) {
    this.hooks = hooks;
    this.dialog = $("player");
    this.video = $("video");
    this.event = null;
    this.dialog.addEventListener("close", () => this.stop());
    this.dialog.addEventListener("click", (e) => {
      if (e.target === this.dialog) this.dialog.close(); // the backdrop
    });
    for (const b of this.dialog.querySelectorAll("[data-close]")) {
      b.addEventListener("click", () => this.dialog.close());
    }
    $("player-newer").addEventListener("click", () => this.step(-1));
    $("player-older").addEventListener("click", () => this.step(1));
    $("player-share").addEventListener("click", () => this.hooks.share(this.event));
    $("player-delete").addEventListener("click", () => this.hooks.remove(this.event));
    this.dialog.addEventListener("keydown", (e) => {
      if (e.target === this.video || e.target.tagName === "INPUT") return; // seeking keys
      if (e.key === "ArrowLeft") { e.preventDefault(); this.step(-1); }
      if (e.key === "ArrowRight") { e.preventDefault(); this.step(1); }
    });
    this.video.addEventListener("error", () => this.failed());
    this.video.addEventListener("loadeddata", () => show($("video-error"), false));
  }

  get open() {
    return this.dialog.open;
  }

  /** Title, facts, subjects, shares: also after a share, without touching the video. */
  describe(event) {
    this.event = event;
    $("player-title").textContent = event.camera;
    const facts = [longWhen(event.start_ms), duration(event.duration_s), bytes(event.size)];
    $("player-sub").textContent = facts.join(" · ");
    $("player-chips").replaceChildren(...subjectChips(event.subjects).childNodes);
    const shares = liveShares(event);
    const shared = $("player-shared");
    shared.replaceChildren();
    if (shares.length) {
      shared.append(icon("share"), el("span", { text: "Shared with " }));
      shares.forEach((s, i) => {
        if (i) shared.append(", ");
        shared.append(el("code", { text: shortKey(s.recipient), title: s.recipient }));
      });
    }
    show(shared, shares.length > 0);
    const note = $("player-note");
    if (event.state === "recording") {
      note.textContent = "Still being recorded: the end of it is not in the bucket yet.";
    } else if (event.state === "cut short") {
      const gaps = event.missing_parts.length ? ` (parts missing: ${event.missing_parts.join(", ")})` : "";
      note.textContent = `This event was cut short${gaps}: what is left plays.`;
    } else {
      note.textContent = "";
    }
    show(note, Boolean(note.textContent));
    $("player-newer").disabled = !this.hooks.canStep(event.id, -1);
    $("player-older").disabled = !this.hooks.canStep(event.id, 1);
  }

  show(event) {
    this.describe(event);
    $("player-download").href = `${eventPath(event.id, "video")}?download=1`;
    show($("video-error"), false);
    this.video.src = eventPath(event.id, "video");
    if (!this.dialog.open) this.dialog.showModal();
    this.video.play().catch(() => {}); // a refused autoplay leaves the controls to the user
    this.video.focus({ preventScroll: true });
  }

  async step(direction) {
    if (!this.event) return;
    const next = await this.hooks.neighbour(this.event.id, direction);
    if (next) this.show(next);
  }

  async failed() {
    if (!this.video.getAttribute("src") || !this.event) return;
    const event = this.event;
    const text = $("video-error-text");
    text.textContent = "This clip cannot be played.";
    show($("video-error"), true);
    const why = await this.hooks.playFailed(event);
    if (this.event === event) {
      text.textContent = why
        ? `This clip cannot be played: ${why}`
        : "This clip cannot be played: the server stopped sending it (see the banner on the page).";
    }
  }

  stop() {
    this.video.pause();
    this.video.removeAttribute("src");
    this.video.load(); // ends the range requests in flight
    this.event = null;
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }
}
