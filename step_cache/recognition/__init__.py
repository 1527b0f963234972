"""From videos to answers with a trained run: classify video files (``predict_videos``), follow actions along an
untrimmed video (``timeline``), or recognise them live frame by frame (``Recognizer``). The backbone and frame
sampling are rebuilt from the settings the run recorded, so the probe sees the tokens it was trained on."""
