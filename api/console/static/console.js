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

  const STEPS = ["queued", "running", "done"];
  let following = null;

  function render(job) {
    result.hidden = false;
    $("result-id").textContent = job.id.slice(0, 8);
    $("result-link").href = job.links.detail;
    const current = job.final ? "done" : job.status;
    const reached = STEPS.indexOf(current);
    document.querySelectorAll("#steps li").forEach((item, index) => {
      item.classList.toggle("done", index < reached || (job.final && index === reached));
      item.classList.toggle("failed", job.final && index === reached && job.status !== "succeeded");
      if (index === reached && !job.final) {
        item.setAttribute("aria-current", "step");
      } else {
        item.removeAttribute("aria-current");
      }
    });
    const labels = {
      queued: "Queued: waiting for a worker…",
      running: "Running on " + (job.worker || "a worker") + "…",
      succeeded: "Done.",
      failed: "Failed.",
      canceled: "Canceled.",
    };
    $("result-status").textContent = labels[job.status] || job.status;
    if (job.final) {
      showOutcome(job);
    }
  }

  function formatMs(value) {
    return value === null || value === undefined ? "—" : value.toLocaleString("en") + " ms";
  }

  function showOutcome(job) {
    $("result-body").hidden = false;
    const answer = $("result-answer");
    answer.textContent = job.result === null ? "(no answer)" : job.result;
    const error = $("result-error");
    error.hidden = !job.error;
    if (job.error) {
      error.textContent = job.error.code + ": " + job.error.message;
    }
    $("result-batch").textContent = job.batch_size === null ? "—" : String(job.batch_size);
    $("result-queue").textContent = formatMs(job.queue_ms);
    $("result-inference").textContent = formatMs(job.inference_ms);
    $("result-worker").textContent = job.worker || "—";
    $("result-image").src = job.links.image;
    $("result-image-caption").textContent =
      "As stored: " + job.image.width + "×" + job.image.height + " PNG";
  }

  // Long-poll: the server answers as soon as the status differs from the one we saw (or
  // after a few seconds without change), so each change shows up at once.
  async function follow(job) {
    const token = {};
    following = token;
    $("result-body").hidden = true;
    render(job);
    let failures = 0;
    while (!job.final && following === token) {
      try {
        const response = await fetch(job.links.watch + "?seen=" + encodeURIComponent(job.status), {
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (!response.ok) {
          $("result-status").textContent = await problemDetail(response);
          return;
        }
        job = await response.json();
        failures = 0;
        if (following === token) {
          render(job);
        }
      } catch (error) {
        failures += 1;
        $("result-status").textContent = "Connection lost; retrying…";
        await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * failures, 5000)));
      }
    }
  }
})();
