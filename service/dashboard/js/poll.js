// Polls `tick` while a view is shown: every `base` ms while the tab is visible
// (slower when `tick` says nothing is moving), backing off exponentially up to
// `max` ms while the tab is hidden, and once more right away when it comes back.
export function poller(tick, { base = 1000, idle = 5000, max = 60_000 } = {}) {
  let timer = null;
  let hiddenDelay = base;
  let stopped = false;

  async function run() {
    timer = null;
    let busy = true;
    try { busy = await tick(); } catch { /* shown by the view; try again later */ }
    if (stopped) return;
    let delay = busy ? base : idle;
    if (document.hidden) {
      hiddenDelay = Math.min(max, hiddenDelay * 2);
      delay = Math.max(delay, hiddenDelay);
    } else {
      hiddenDelay = base;
    }
    timer = setTimeout(run, delay);
  }

  function onVisible() {
    if (!document.hidden && timer !== null) {
      clearTimeout(timer);
      run();
    }
  }

  document.addEventListener("visibilitychange", onVisible);
  run();
  return () => {
    stopped = true;
    if (timer !== null) clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}
