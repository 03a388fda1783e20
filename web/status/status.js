// kvtier status page: polls /api/v1/status and draws it. Every figure shown
// sits in an element with data-field (its path in the JSON document) and
// data-value (the raw value), so what is shown can be checked against the
// document of the same "seq".
(function () {
  'use strict';

  var TOKEN_KEY = 'kvtier-status-token';
  var state = { paused: false, charts: {}, last: null, timer: null };

  // A token given as ?token=... is kept for this tab and taken out of the
  // address bar; it is then sent as a bearer header.
  (function takeToken() {
    var params = new URLSearchParams(window.location.search);
    var t = params.get('token');
    if (t) {
      try { window.sessionStorage.setItem(TOKEN_KEY, t); } catch (e) { /* storage off */ }
      params.delete('token');
      var rest = params.toString();
      window.history.replaceState(null, '', window.location.pathname + (rest ? '?' + rest : ''));
    }
  })();

  function token() {
    try { return window.sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; }
  }

  // ---- formatting --------------------------------------------------------
  function fmtCount(v) {
    if (v === null || v === undefined) return '–';
    return Math.round(v).toLocaleString('en-US');
  }
  function fmtBytes(v) {
    if (v === null || v === undefined) return '–';
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    var i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
  }
  function fmtRate(v) {
    if (v === null || v === undefined) return '–';
    return (v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)) + '/s';
  }
  function fmtPercent(v) {
    if (v === null || v === undefined) return '–';
    return (v * 100).toFixed(1) + '%';
  }
  function fmtSeconds(v) {
    if (v === null || v === undefined) return '–';
    if (v < 1e-3) return (v * 1e6).toFixed(0) + ' µs';
    if (v < 1) return (v * 1e3).toFixed(v < 0.01 ? 2 : 1) + ' ms';
    if (v < 120) return v.toFixed(1) + ' s';
    return fmtDuration(v);
  }
  function fmtDuration(v) {
    if (v === null || v === undefined) return '–';
    var s = Math.floor(v), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60);
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + m + 'm';
    if (m > 0) return m + 'm ' + (s % 60) + 's';
    return s + 's';
  }
  var FORMATS = {
    text: function (v) { return v === null || v === undefined ? '–' : String(v); },
    count: fmtCount, bytes: fmtBytes, rate: fmtRate, percent: fmtPercent,
    seconds: fmtSeconds, duration: fmtDuration,
    bytesRate: function (v) { return v === null || v === undefined ? '–' : fmtBytes(v) + '/s'; },
    bool: function (v) { return v ? 'yes' : 'no'; },
    up: function (v) { return v ? 'up' : 'down'; },
    ready: function (v) { return v ? 'ready' : 'not ready'; }
  };

  function lookup(doc, path) {
    var parts = path.split('.');
    var v = doc;
    for (var i = 0; i < parts.length; i++) {
      if (v === null || v === undefined) return undefined;
      v = v[parts[i]];
    }
    return v;
  }

  function setField(el, doc) {
    var path = el.getAttribute('data-field');
    var v = lookup(doc, path);
    var f = FORMATS[el.getAttribute('data-format') || 'text'] || FORMATS.text;
    el.textContent = f(v);
    el.setAttribute('data-value', JSON.stringify(v === undefined ? null : v));
    if (el.getAttribute('data-format') === 'ready' || el.getAttribute('data-format') === 'up') {
      el.className = v ? 'ok' : 'bad';
    }
  }

  function cell(row, path, format) {
    var td = document.createElement('td');
    var span = document.createElement('span');
    span.setAttribute('data-field', path);
    span.setAttribute('data-format', format);
    td.appendChild(span);
    row.appendChild(td);
  }

  function fillTable(id, rows, prefix, columns) {
    var body = document.querySelector('#' + id + ' tbody');
    while (body.firstChild) body.removeChild(body.firstChild);
    for (var i = 0; i < rows.length; i++) {
      var tr = document.createElement('tr');
      for (var c = 0; c < columns.length; c++) {
        cell(tr, prefix + '.' + i + '.' + columns[c][0], columns[c][1]);
      }
      body.appendChild(tr);
    }
    var empty = document.getElementById(id + '-empty');
    if (empty) empty.hidden = rows.length > 0;
    document.getElementById(id).hidden = rows.length === 0 && !!empty;
  }

  // ---- charts --------------------------------------------------------------
  var COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
                '#7f7f7f', '#bcbd22', '#17becf'];

  function chartWidth(el) { return Math.max(280, el.clientWidth || 480); }

  function ensureChart(id, seriesDefs, valueFmt, range) {
    var key = id + ':' + seriesDefs.map(function (s) { return s.label; }).join('|');
    var existing = state.charts[id];
    if (existing && existing.key === key) return existing.plot;
    var el = document.getElementById(id);
    if (existing) { existing.plot.destroy(); }
    var series = [{}].concat(seriesDefs.map(function (s, i) {
      return { label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 1.5,
               spanGaps: false, value: function (u, v) { return valueFmt(v); } };
    }));
    var opts = {
      width: chartWidth(el), height: 180, series: series,
      scales: { x: { time: true }, y: range ? { range: range } : { auto: true } },
      axes: [{}, { size: 96, values: function (u, vals) { return vals.map(valueFmt); } }],
      legend: { live: true }
    };
    var empty = [[]].concat(seriesDefs.map(function () { return []; }));
    var plot = new window.uPlot(opts, empty, el);
    state.charts[id] = { key: key, plot: plot };
    return plot;
  }

  function drawCharts(doc) {
    var h = doc.history;
    if (!h || !window.uPlot) return;
    var t = h.time;
    var tiers = Object.keys(h.tiers || {});
    ensureChart('chart-hit', [{ label: 'hit rate' }], fmtPercent, [0, 1])
        .setData([t, h.hit_rate]);
    var bytesDefs = [], bytesData = [t];
    tiers.forEach(function (name) {
      bytesDefs.push({ label: name + ' read' });
      bytesData.push(h.tiers[name].read_bytes_per_second);
      bytesDefs.push({ label: name + ' write' });
      bytesData.push(h.tiers[name].write_bytes_per_second);
    });
    ensureChart('chart-bytes', bytesDefs, function (v) { return FORMATS.bytesRate(v); })
        .setData(bytesData);
    ensureChart('chart-occupancy', tiers.map(function (n) { return { label: n }; }), fmtPercent,
                [0, 1]).setData([t].concat(tiers.map(function (n) { return h.tiers[n].occupancy; })));
    ensureChart('chart-latency', [{ label: 'p50' }, { label: 'p90' }, { label: 'p99' }],
                fmtSeconds).setData([t, h.latency_p50_seconds, h.latency_p90_seconds,
                                     h.latency_p99_seconds]);
    ensureChart('chart-events', [{ label: 'requests' }, { label: 'errors', color: '#d62728' },
                                 { label: 'evictions', color: '#ff7f0e' },
                                 { label: 'checksum failures', color: '#9467bd' }], fmtRate)
        .setData([t, h.requests_per_second, h.errors_per_second, h.evictions_per_second,
                  h.checksum_failures_per_second]);
    ensureChart('chart-saved', [{ label: 'tokens saved' }], fmtRate)
        .setData([t, h.prefill_tokens_saved_per_second]);
  }

  // ---- rendering -------------------------------------------------------------
  function render(doc) {
    state.last = doc;
    document.title = (doc.title || 'kvtier') + ' · ' + doc.node;
    document.getElementById('title').textContent = doc.title || 'kvtier';
    fillTable('tiers', doc.tiers, 'tiers', [
      ['tier', 'text'], ['used_bytes', 'bytes'], ['capacity_bytes', 'bytes'],
      ['occupancy', 'percent'], ['chunks', 'count'], ['pinned_chunks', 'count'],
      ['read_bytes_per_second', 'bytesRate'], ['write_bytes_per_second', 'bytesRate'],
      ['hits', 'count'], ['misses', 'count'], ['evictions', 'count'],
      ['save_rejections', 'count'], ['checksum_failures', 'count']]);
    fillTable('namespaces', doc.namespaces, 'namespaces', [
      ['id', 'text'], ['model_id', 'text'], ['model_revision', 'text'], ['salted', 'bool'],
      ['lookups', 'count'], ['hit_rate', 'percent'], ['saved_chunks', 'count'],
      ['saved_bytes', 'bytes'], ['loaded_chunks', 'count'], ['loaded_bytes', 'bytes'],
      ['loaded_tokens', 'count']]);
    fillTable('peers', doc.peers, 'peers', [
      ['name', 'text'], ['address', 'text'], ['transport', 'text'], ['up', 'up'],
      ['bytes_sent', 'bytes'], ['bytes_received', 'bytes']]);
    fillTable('methods', doc.latency.methods, 'latency.methods', [
      ['method', 'text'], ['count', 'count'], ['requests_per_second', 'rate'],
      ['mean_seconds', 'seconds'], ['p50_seconds', 'seconds'], ['p99_seconds', 'seconds']]);
    var fields = document.querySelectorAll('[data-field]');
    for (var i = 0; i < fields.length; i++) setField(fields[i], doc);
    drawCharts(doc);
    document.getElementById('updated').textContent =
        new Date(doc.time * 1000).toLocaleTimeString('en-GB');
    document.body.setAttribute('data-seq', String(doc.seq));
  }

  function banner(text) {
    var b = document.getElementById('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }

  function schedule(doc) {
    var every = doc && doc.sample_interval_seconds ? doc.sample_interval_seconds : 1;
    state.timer = window.setTimeout(poll, Math.max(250, every * 1000));
  }

  function poll() {
    state.timer = null;
    if (state.paused) return;
    var headers = {};
    var t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    window.fetch('/api/v1/status', { headers: headers, cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          return r.text().then(function (msg) { throw new Error(msg.trim() ||
              'not authorized: open this page as /?token=<status token>'); });
        }
        if (!r.ok) throw new Error('/api/v1/status answered ' + r.status);
        return r.json();
      })
      .then(function (doc) {
        banner('');
        if (!state.paused) render(doc);
        schedule(doc);
      })
      .catch(function (e) {
        banner('Cannot read /api/v1/status: ' + e.message);
        schedule(state.last);
      });
  }

  function togglePause() {
    state.paused = !state.paused;
    document.getElementById('pause').textContent = state.paused ? 'Resume' : 'Pause';
    document.body.classList.toggle('paused', state.paused);
    if (!state.paused && state.timer === null) poll();
  }

  window.addEventListener('resize', function () {
    Object.keys(state.charts).forEach(function (id) {
      var el = document.getElementById(id);
      state.charts[id].plot.setSize({ width: chartWidth(el), height: 180 });
    });
  });

  document.addEventListener('DOMContentLoaded', function () {
    document.getElementById('pause').addEventListener('click', togglePause);
    poll();
  });
  // Exposed for tests and for the console: the document last drawn, and pause.
  window.kvtierStatus = {
    last: function () { return state.last; },
    pause: function () { if (!state.paused) togglePause(); },
    resume: function () { if (state.paused) togglePause(); }
  };
})();
