// sightline console: the Ask page's upload and live follow-up. Plain JavaScript, no
// libraries. User text (prompts, answers, errors) is only ever set with textContent.
"use strict";

(function () {
  const form = document.getElementById("ask-form");
  if (!form) {
    return;
  }
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const fileInput = $("image");
  const dropzone = $("dropzone");
  const preview = $("preview");
  const submitButton = $("ask-submit");
  const formError = $("ask-error");
  const result = $("ask-result");
  let previewUrl = null;

  function showPreview(file) {
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
    }
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = "Preview of " + file.name;
    preview.hidden = false;
    $("dropzone-text").textContent = file.name + " — drop or choose another to replace it";
  }

  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) {
      showPreview(fileInput.files[0]);
    }
  });
  ["dragenter", "dragover"].forEach((name) =>
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    })
  );
  ["dragleave", "drop"].forEach((name) =>
    dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"))
  );
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      fileInput.files = event.dataTransfer.files;
      showPreview(fileInput.files[0]);
    }
  });

  function fail(element, message) {
    element.textContent = message;
    element.hidden = false;
    element.focus();
  }

  // The server answers errors as problem+json; its "detail" is written for people.
  async function problemDetail(response) {
    try {
      const body = await response.json();
      return body.detail || body.title || "The request failed (" + response.status + ").";
    } catch (error) {
      return "The request failed (" + response.status + ").";
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.hidden = true;
    if (!fileInput.files.length) {
      return fail(formError, "Choose an image first.");
    }
    if (!$("prompt").value.trim()) {
      return fail(formError, "Type a prompt first.");
    }
    const data = new FormData(form);
    if (!$("max_new_tokens").value) {
      data.delete("max_new_tokens"); // the server's default applies
    }
    submitButton.disabled = true;
    submitButton.textContent = "Submitting…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
        credentials: "same-origin",
      });
      if (!response.ok) {
        return fail(formError, await problemDetail(response));
      }
      follow(await response.json());
    } catch (error) {
      fail(formError, "The console could not be reached. Check your connection and retry.");
    } finally {
      submitButton.disabled = false;
      submitButton.textContent = "Ask";
    }
  });

  // Following a job: its event stream (server-sent events, docs/console.md). EventSource
  // sends the session cookie itself, and after a dropped connection it reconnects with
  // Last-Event-ID, so the server resumes where the page left off.
  const STEPS = ["queued", "running", "done"];
  const FINAL = ["succeeded", "failed", "canceled"];
  const answer = $("result-answer");
  const reasoning = $("result-reasoning");
  let source = null; // the open stream of the job on show
  let text = { reasoning: "", answer: "" };

  function showStatus(status, worker) {
    const final = FINAL.includes(status);
    const reached = STEPS.indexOf(final ? "done" : status);
    document.querySelectorAll("#steps li").forEach((item, index) => {
      item.classList.toggle("done", index < reached || (final && index === reached));
      item.classList.toggle("failed", final && index === reached && status !== "succeeded");
      if (index === reached && !final) {
        item.setAttribute("aria-current", "step");
      } else {
        item.removeAttribute("aria-current");
      }
    });
    const labels = {
      queued: "Queued: waiting for a worker…",
      running: "Running on " + (worker || "a worker") + "…",
      succeeded: "Done.",
      failed: "Failed.",
      canceled: "Canceled.",
    };
    $("result-status").textContent = labels[status] || status;
  }

  // The reasoning block shows only when there is reasoning; the text block once any
  // text has come.
  function showText() {
    $("result-text").hidden = !(text.answer || text.reasoning);
    $("result-reasoning-block").hidden = !text.reasoning;
    reasoning.textContent = text.reasoning;
    answer.textContent = text.answer;
  }

  function formatMs(value) {
    return value === null || value === undefined ? "—" : value.toLocaleString("en") + " ms";
  }

  // The final job (the stream's "done": the job as GET /v1/jobs/{id} returns it).
  function showOutcome(job, links) {
    showStatus(job.status, job.worker);
    const answered = job.result === null ? "(no answer)" : job.result;
    text = { reasoning: job.reasoning || "", answer: answered };
    showText();
    answer.setAttribute("aria-busy", "false");
    $("result-body").hidden = false;
    const error = $("result-error");
    error.hidden = !job.error;
    if (job.error) {
      error.textContent = job.error.code + ": " + job.error.message;
    }
    $("result-batch").textContent = job.batch_size === null ? "—" : String(job.batch_size);
    $("result-queue").textContent = formatMs(job.queue_ms);
    $("result-inference").textContent = formatMs(job.inference_ms);
    $("result-worker").textContent = job.worker || "—";
    $("result-image").src = links.image;
    $("result-image-caption").textContent =
      "As stored: " + job.image.width + "×" + job.image.height + " PNG";
  }

  function stopFollowing() {
    if (source) {
      source.close();
      source = null;
    }
    answer.setAttribute("aria-busy", "false");
  }

  // ``job`` is the submission's answer: the job as queued, plus the console's links.
  function follow(job) {
    stopFollowing();
    const links = job.links;
    result.hidden = false;
    $("result-id").textContent = job.id.slice(0, 8);
    $("result-link").href = links.detail;
    $("result-body").hidden = true;
    text = { reasoning: "", answer: "" };
    showText();
    showStatus(job.status, job.worker);
    answer.setAttribute("aria-busy", "true"); // announced once, when done
    const stream = new EventSource(links.events);
    source = stream;
    const on = (name, handle) =>
      stream.addEventListener(name, (event) => handle(JSON.parse(event.data)));
    on("status", (body) => showStatus(body.status, body.worker));
    on("delta", (body) => {
      if (Object.hasOwn(text, body.part)) {
        text[body.part] += body.text;
        showText();
      }
    });
    on("reset", () => {
      text = { reasoning: "", answer: "" }; // the text starts over
      showText();
    });
    on("done", (job) => {
      stopFollowing(); // the server ends the stream; without close() it would reconnect
      showOutcome(job, links);
    });
    stream.addEventListener("error", () => {
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (an error status, not a network error): EventSource gives up.
        stopFollowing();
        $("result-status").textContent =
          "The job cannot be followed live (signed out, too many open streams, or the job " +
          "is gone). Open its details below, or sign in again.";
      } else {
        // The status event that every reconnection starts with replaces this.
        $("result-status").textContent = "Connection lost; retrying…";
      }
    });
  }
})();
