// FacePhi web page: a photo (or the webcam) → 478 facial landmarks → POST /predict → answer + class bars.
// With in-browser landmarks (MediaPipe Tasks FaceLandmarker, vendored WebAssembly) only the landmark
// numbers are sent; otherwise the photo is sent and the server returns the landmarks it found.

const CLASSES = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"];
const VENDOR = new URL("vendor/", import.meta.url);
const MAX_SIDE = 1280; // as facephi's image loading: the longest side is downscaled to this for the mesh
const PADDING = 0.25; // as facephi's FaceMesher: one retry with a black border when no face is found
const WEBCAM_INTERVAL_MS = 1000; // at most one webcam question per second (and one at a time)

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const video = $("video");
const state = {
  landmarker: null,
  mode: "IMAGE",
  edges: null,
  stream: null,
  request: 0, // number of the latest request; older answers are ignored
  shown: 0,
  inFlight: false,
  lastSent: 0,
};

function setState(name, message = "") {
  document.body.dataset.state = name;
  $("status").textContent = message;
}

// ------------------------------------------------------------------ the in-browser landmarker
async function loadLandmarker() {
  const note = $("landmarker-state");
  try {
    const vision = await import("./vendor/vision_bundle.mjs");
    state.landmarker = await vision.FaceLandmarker.createFromOptions(
      {
        wasmLoaderPath: new URL("vision_wasm_internal.js", VENDOR).href,
        wasmBinaryPath: new URL("vision_wasm_internal.wasm", VENDOR).href,
      },
      {
        baseOptions: { modelAssetPath: new URL("face_landmarker.task", VENDOR).href, delegate: "CPU" },
        runningMode: "IMAGE",
        numFaces: 4,
        minFaceDetectionConfidence: 0.5,
      },
    );
    state.edges = vision.FaceLandmarker.FACE_LANDMARKS_TESSELATION;
    document.body.dataset.landmarker = "ready";
    note.textContent = "In-browser face landmarker ready (MediaPipe, running in this page).";
    $("webcam-start").disabled = !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
    if ($("webcam-start").disabled) {
      note.textContent += " This browser gives no webcam access here (it needs https:// or localhost).";
    }
  } catch (error) {
    console.error("in-browser landmarker unavailable", error);
    document.body.dataset.landmarker = "failed";
    $("local-landmarks").checked = false;
    $("local-landmarks").disabled = true;
    note.textContent = "In-browser landmarks are unavailable in this browser (" + (error && error.message || error) +
      "): photos are sent to the server, read in memory and dropped; the webcam is off.";
  }
}

async function setMode(mode) {
  if (state.mode !== mode) {
    await state.landmarker.setOptions({ runningMode: mode });
    state.mode = mode;
  }
}

function largestFace(faces, width, height) {
  let best = null;
  let bestArea = -1;
  for (const face of faces) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const p of face) {
      x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x);
      y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
    }
    const area = (x1 - x0) * width * (y1 - y0) * height;
    if (area > bestArea) { best = face; bestArea = area; }
  }
  return best ? best.map((p) => [p.x, p.y, p.z]) : null;
}

// Landmarks of the largest face of an image (x, y as fractions, z on the scale of x), as facephi finds them.
async function imageLandmarks(image, width, height) {
  await setMode("IMAGE");
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const work = document.createElement("canvas");
  work.width = w; work.height = h;
  work.getContext("2d").drawImage(image, 0, 0, w, h);
  let faces = state.landmarker.detect(work).faceLandmarks;
  if (faces.length) return { points: largestFace(faces, w, h), count: faces.length };
  const px = Math.round(PADDING * w), py = Math.round(PADDING * h);
  const framed = document.createElement("canvas");
  framed.width = w + 2 * px; framed.height = h + 2 * py;
  const f = framed.getContext("2d");
  f.fillStyle = "#000"; f.fillRect(0, 0, framed.width, framed.height);
  f.drawImage(work, px, py);
  faces = state.landmarker.detect(framed).faceLandmarks;
  if (!faces.length) return { points: null, count: 0 };
  const points = largestFace(faces, framed.width, framed.height).map(([x, y, z]) => [
    (x * framed.width - px) / w, (y * framed.height - py) / h, z * framed.width / w]);
  return { points, count: faces.length };
}

// ------------------------------------------------------------------------------------ drawing
function fitCanvas(width, height, maxWidth = 640, maxHeight = 560) {
  const scale = Math.min(1, maxWidth / width, maxHeight / height);
  const ratio = window.devicePixelRatio || 1;
  const cssW = Math.round(width * scale), cssH = Math.round(height * scale);
  canvas.width = Math.round(cssW * ratio);
  canvas.height = Math.round(cssH * ratio);
  canvas.style.width = cssW + "px";
  canvas.style.aspectRatio = `${cssW} / ${cssH}`;
}

function draw(source, points) {
  const w = canvas.width, h = canvas.height;
  ctx.drawImage(source, 0, 0, w, h);
  document.body.dataset.drawn = "image";
  canvas.dataset.points = "0";
  if (!points) return;
  const r = Math.max(1, w / 500);
  if (state.edges && points.length >= 468) {
    ctx.strokeStyle = "rgba(120, 220, 255, 0.45)";
    ctx.lineWidth = Math.max(0.5, r * 0.5);
    ctx.beginPath();
    for (const { start, end } of state.edges) {
      ctx.moveTo(points[start][0] * w, points[start][1] * h);
      ctx.lineTo(points[end][0] * w, points[end][1] * h);
    }
    ctx.stroke();
  }
  ctx.fillStyle = "rgba(60, 255, 160, 0.95)";
  ctx.beginPath();
  for (const [x, y] of points) {
    ctx.moveTo(x * w + r, y * h);
    ctx.arc(x * w, y * h, r, 0, 2 * Math.PI);
  }
  ctx.fill();
  document.body.dataset.drawn = "mesh";
  canvas.dataset.points = String(points.length);
}

// ------------------------------------------------------------------------------------ answers
const DISPLAY = Object.fromEntries(CLASSES.map((c) => [c, c[0].toUpperCase() + c.slice(1)]));

function showFace(face, faces) {
  $("result").hidden = false;
  const answer = $("answer");
  answer.textContent = face.answer ?? "(this model has no language model: its classifier gives the class)";
  $("predicted").textContent = face.predicted_class ? DISPLAY[face.predicted_class] || face.predicted_class
    : "(no emotion named in the answer)";
  const scores = face.scores || {};
  const top = Object.keys(scores).length ? Object.entries(scores).sort((a, b) => b[1] - a[1])[0][0] : null;
  for (const bar of document.querySelectorAll("#bars .bar")) {
    const p = scores[bar.dataset.class];
    const known = typeof p === "number";
    bar.querySelector(".fill").style.width = known ? `${(100 * p).toFixed(1)}%` : "0";
    bar.querySelector(".value").textContent = known ? `${(100 * p).toFixed(1)} %` : "–";
    bar.dataset.p = known ? String(p) : "";
    bar.classList.toggle("top", bar.dataset.class === top);
  }
  const from = { likelihood: "the language model's likelihood of answering each emotion",
                 encoder: "the landmark encoder's classifier" }[face.scores_from];
  $("scores-note").textContent = (from ? `Probabilities from ${from}.` : "") +
    (faces > 1 ? ` ${faces} faces found; this is the largest.` : "");
}

async function ask(body, contentType, query = "") {
  const number = ++state.request;
  const response = await fetch("/predict" + query, { method: "POST", headers: { "Content-Type": contentType }, body });
  let payload = null;
  try { payload = await response.json(); } catch { payload = null; }
  if (number < state.shown) return null; // a newer answer is already on screen
  state.shown = number;
  if (!response.ok) {
    const detail = payload && payload.detail ? payload.detail : `HTTP ${response.status}`;
    throw new Error(detail);
  }
  return payload.faces;
}

function firstAnswered(faces) {
  return faces.find((f) => !f.error) || faces[0];
}

// ------------------------------------------------------------------------------------- photos
async function handleFile(file) {
  if (!file) return;
  stopWebcam();
  setState("working", "Reading the photo");
  $("result").hidden = true;
  const url = URL.createObjectURL(file);
  const image = new Image();
  try {
    image.src = url;
    await image.decode();
  } catch {
    URL.revokeObjectURL(url);
    document.body.dataset.drawn = "no";
    setState("error", "This file is not an image this browser can read.");
    return;
  }
  const width = image.naturalWidth, height = image.naturalHeight;
  fitCanvas(width, height);
  draw(image, null);
  try {
    let faces;
    if ($("local-landmarks").checked && document.body.dataset.landmarker === "loading") {
      setState("working", "Loading the in-browser face landmarker");
      await window.facephiReady; // rather than sending the photo meanwhile
    }
    if (state.landmarker && $("local-landmarks").checked) {
      setState("working", "Finding the face landmarks in this browser");
      const { points, count } = await imageLandmarks(image, width, height);
      if (!points) throw new Error("no face found (also retried with a border)");
      draw(image, points);
      setState("working", "Asking FacePhi (only the landmarks were sent)");
      faces = await ask(JSON.stringify({ landmarks: points, image_size: [width, height] }), "application/json");
      if (!faces) return;
      faces.forEach((f) => { f.faces = f.faces ?? count; });
    } else {
      setState("working", "Sending the photo; the server finds the landmarks and asks FacePhi");
      faces = await ask(file, file.type || "application/octet-stream", "?landmarks=1");
      if (!faces) return;
      const face = firstAnswered(faces);
      draw(image, face.landmarks || null);
    }
    const face = firstAnswered(faces);
    showFace(face, face.faces || faces.length);
    setState("done", "");
  } catch (error) {
    setState("error", String(error.message || error));
  } finally {
    URL.revokeObjectURL(url);
  }
}

// ------------------------------------------------------------------------------------- webcam
async function startWebcam() {
  if (!state.landmarker) return;
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    setState("error", "No webcam: " + (error.message || error));
    return;
  }
  await setMode("VIDEO");
  video.srcObject = state.stream;
  await video.play();
  $("webcam-start").hidden = true;
  $("webcam-stop").hidden = false;
  fitCanvas(video.videoWidth || 640, video.videoHeight || 480);
  setState("working", "Webcam on: landmarks are found in this browser; only they are sent, about once a second");
  let lastTime = -1;
  const loop = () => {
    if (!state.stream) return;
    if (video.currentTime !== lastTime && video.readyState >= 2) {
      lastTime = video.currentTime;
      const faces = state.landmarker.detectForVideo(video, performance.now()).faceLandmarks;
      const points = largestFace(faces, video.videoWidth, video.videoHeight);
      draw(video, points);
      const now = performance.now();
      if (!points) {
        setState("working", "Webcam on: no face in view");
      } else if (!state.inFlight && now - state.lastSent >= WEBCAM_INTERVAL_MS) {
        state.inFlight = true;
        state.lastSent = now;
        const body = JSON.stringify({ landmarks: points, image_size: [video.videoWidth, video.videoHeight] });
        ask(body, "application/json")
          .then((answer) => {
            if (answer && state.stream) {
              showFace(firstAnswered(answer), faces.length);
              setState("done", "Webcam on: only landmarks are sent, about once a second");
            }
          })
          .catch((error) => setState("error", String(error.message || error)))
          .finally(() => { state.inFlight = false; });
      }
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}

function stopWebcam() {
  if (!state.stream) return;
  for (const track of state.stream.getTracks()) track.stop();
  state.stream = null;
  video.srcObject = null;
  $("webcam-start").hidden = false;
  $("webcam-stop").hidden = true;
  setState("idle", "Webcam off.");
}

// -------------------------------------------------------------------------------------- wiring
$("file").addEventListener("change", (event) => handleFile(event.target.files[0]));
$("webcam-start").addEventListener("click", startWebcam);
$("webcam-stop").addEventListener("click", stopWebcam);
const stage = $("stage");
stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dragging"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
stage.addEventListener("drop", (event) => {
  event.preventDefault();
  stage.classList.remove("dragging");
  handleFile(event.dataTransfer.files[0]);
});
window.facephiReady = loadLandmarker(); // the page works without it: photos are then sent to the server
